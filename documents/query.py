"""`Index`: BM25 search over an index file; questions become FTS5 queries of quoted terms, never FTS5 syntax."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeqa.documents import store
from edgeqa.errors import DataError, InputError
from edgeqa.runtime.inputs import check_question

#: BM25 weights of the full-text columns: the file's title, the section heading, the passage text.
COLUMN_WEIGHTS = (2.0, 2.0, 1.0)
#: Terms kept from a question (the rarest matter; a pasted page should not make a huge query).
MAX_TERMS = 32
#: Passages read for each question by default.
DEFAULT_K = 4
#: Passages one search may return.
MAX_K = 100
#: About how many passages a search scores at most: its rarest words pick the candidates up to this many,
#: all its words score them. Scoring costs about a microsecond a passage.
CANDIDATES = 2000


def check_k(k: int) -> int:
    """`k` if it is a number of passages one search may return, else an `InputError` naming the range."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InputError(f"k is {k!r}; read 1 to {MAX_K} passages per question")
    return k


# Words too common to tell passages apart; dropped unless a question has nothing else.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers him his how i if in into is it its itself just me more most my no nor not of off on once only or other our
    ours out over own same she should so some such than that the their theirs them then there these they this those
    through to too under until up very was we were what when where which while who whom why will with would you
    your yours tell please""".split()
)
_WORD = re.compile(r"\w+")


def question_words(question: str) -> list[str]:
    """The question's distinct words, lower-cased, common ones left out unless nothing else is left."""
    words = [w.lower() for w in _WORD.findall(question)]
    terms = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(terms))[:MAX_TERMS]


def quoted(words: list[str]) -> str:
    """Words as FTS5 strings joined by OR: each is matched as text, never read as FTS5 syntax."""
    return " OR ".join('"' + word.replace('"', '""') + '"' for word in words)


def fts_query(question: str, passages_with: dict[str, int] | None = None) -> str | None:
    """The FTS5 query for a question: any of its words, each a quoted string. None when it has no word
    that can match.

    Args:
        passages_with: How many passages hold each word; words in none are left out, and a passage must
            hold one of the rarest words (together in at most `CANDIDATES` passages, or the rarest word
            alone) to be a candidate, all words still counting in its score. This keeps a search over
            100k passages from scoring every passage that says "used".
    """
    words = question_words(question)
    if passages_with is None:
        return quoted(words) if words else None
    words = [w for w in words if passages_with.get(w, 0) > 0]
    if not words:
        return None
    rare: list[str] = []
    for word in sorted(words, key=lambda w: passages_with[w]):  # the rarest first, up to the budget (one at least)
        if rare and sum(passages_with[w] for w in rare) + passages_with[word] > CANDIDATES:
            break
        rare.append(word)
    if len(rare) == len(words):
        return quoted(words)
    return f"({quoted(sorted(rare, key=words.index))}) AND ({quoted(words)})"


def narrow_query(question: str, passages_with: dict[str, int]) -> str | None:
    """When even the question's rarest word is in more than `CANDIDATES` passages, a query whose candidates
    hold its two rarest words (all words still scoring); None otherwise. Tried first: if it finds fewer
    passages than asked for, the search falls back on `fts_query`."""
    words = [w for w in question_words(question) if passages_with.get(w, 0) > 0]
    if len(words) < 2:
        return None
    first, second = sorted(words, key=lambda w: passages_with[w])[:2]
    if passages_with[first] <= CANDIDATES:
        return None
    return f"({quoted([first])} AND {quoted([second])}) AND ({quoted(words)})"


_SEARCH = f"""
SELECT p.id, f.shown, p.title, p.heading, p.start_line, p.end_line, f.unit, p.text, hit.score
FROM (SELECT rowid, bm25(passages_fts, {", ".join(map(str, COLUMN_WEIGHTS))}) AS score FROM passages_fts
      WHERE passages_fts MATCH ? ORDER BY score LIMIT ?) AS hit
JOIN passages AS p ON p.id = hit.rowid
JOIN files AS f ON f.id = p.file_id
ORDER BY hit.score
"""


class _Terms:
    """Counts the passages that hold a word, with the index's own FTS5 tokenizer (stemming included)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.scratch = sqlite3.connect(":memory:", check_same_thread=False)
        self.scratch.execute(f'CREATE VIRTUAL TABLE q USING fts5(w, tokenize="{store.TOKENIZE}")')
        self.scratch.execute("CREATE VIRTUAL TABLE qv USING fts5vocab(q, 'instance')")

    def passages_with(self, words: list[str]) -> dict[str, int]:
        self.scratch.execute("DELETE FROM q")
        self.scratch.executemany("INSERT INTO q (rowid, w) VALUES (?, ?)", enumerate(words))
        terms: dict[int, list[str]] = {}
        for row, term in self.scratch.execute("SELECT doc, term FROM qv"):
            terms.setdefault(row, []).append(term)
        counts = {}
        for row, word in enumerate(words):
            found = [self._count(term) for term in terms.get(row, [])]
            counts[word] = min(found) if found else 0  # a word of several terms is a phrase: at most its rarest
        return counts

    def _count(self, term: str) -> int:
        row = self.connection.execute("SELECT passages FROM term_counts WHERE term = ?", (term,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.scratch.close()


@dataclass(frozen=True)
class Passage:
    """One search result.

    Attributes:
        file: The file's path as indexed.
        title: The file's title (markdown/HTML heading, JSONL title, PDF title, else the file name).
        heading: The section heading the passage sits under ("" if none).
        start_line: First source line (page, for PDF) of the passage, 1-based.
        end_line: Last source line (page, for PDF).
        unit: What the line numbers count: "line" or "page".
        text: The passage.
        rank: Its place in the results, from 1.
        score: BM25 relevance (higher is better), comparable within one search.
    """

    id: int
    file: str
    title: str
    heading: str
    start_line: int
    end_line: int
    unit: str
    text: str
    rank: int
    score: float

    @property
    def source(self) -> str:
        """Where it is: `file:12-20` (lines) or `file p.3-4` (PDF pages)."""
        span = str(self.start_line) if self.start_line == self.end_line else f"{self.start_line}-{self.end_line}"
        return f"{self.file} p.{span}" if self.unit == "page" else f"{self.file}:{span}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "source": self.source}


class Index:
    """A read-only view of an index file, safe to share between threads (one connection each, closed
    once its thread has ended: the next thread to open one closes them).

    An `edgeqa index --update` or a rebuild is seen by the next search, which reopens and checks the index
    (its tokenizer, `info`) after any change another process made to it, or after the file was replaced.
    """

    def __init__(self, path: Path, info: store.IndexInfo, tokenizer_sha256: str | None = None) -> None:
        self.path = path
        self.info = info
        self._tokenizer_sha256 = tokenizer_sha256
        self._local = threading.local()
        self._lock = threading.Lock()
        self._held: dict[threading.Thread, tuple[sqlite3.Connection, _Terms]] = {}  # by the thread that searched

    @classmethod
    def open(cls, path: Path | str, tokenizer_sha256: str | None = None, tokenizer_name: str = "the reader") -> Index:
        """Open and check an index.

        Args:
            tokenizer_sha256: The reader's tokenizer fingerprint (`tokenizer_sha256(path)`); another is refused.

        Raises:
            DataError: missing, not an edgeqa index, damaged, of another format, or sized for another tokenizer.
        """
        path = Path(path)
        connection, info = _open(path, tokenizer_sha256, tokenizer_name)
        index = cls(path, info, tokenizer_sha256)
        index._adopt(connection)
        return index

    def _adopt(self, connection: sqlite3.Connection) -> None:
        """Make `connection` this thread's, closing those of threads that have ended (connections are
        opened with `check_same_thread=False`: another thread may close them once their own is gone)."""
        self._local.connection = connection
        self._local.terms = _Terms(connection)
        self._local.identity = _identity(self.path)
        self._local.version = _data_version(connection)
        with self._lock:
            ended = [thread for thread in self._held if not thread.is_alive()]
            for thread in ended:
                _close(*self._held.pop(thread))
            self._held[threading.current_thread()] = (connection, self._local.terms)

    def _reader(self) -> tuple[sqlite3.Connection, _Terms]:
        """This thread's connection, reopened if the file was replaced or another process changed it."""
        connection = getattr(self._local, "connection", None)
        if (
            connection is not None
            and self._local.identity == _identity(self.path)
            and self._local.version == _data_version(connection)
        ):
            return connection, self._local.terms
        if connection is not None:  # forgotten before reopening: a failed reopen leaves none, and the next tries again
            with self._lock:
                self._held.pop(threading.current_thread(), None)
            _close(connection, self._local.terms)
            self._local.connection = self._local.terms = None
        connection, info = _open(self.path, self._tokenizer_sha256, "the reader")
        self.info = info
        self._adopt(connection)
        return connection, self._local.terms

    def search(self, question: str, k: int = DEFAULT_K) -> list[Passage]:
        """The `k` passages that best match the question by BM25, best first; [] when none shares a word with it.

        Raises:
            InputError: a question that is not a string, or `k` out of range.
            DataError: the index cannot be read.
        """
        check_question(question)
        check_k(k)
        words = question_words(question)
        if not words:
            return []
        try:
            connection, terms = self._reader()
            counts = terms.passages_with(words)
            query = fts_query(question, counts)
            if query is None:
                return []
            narrow = narrow_query(question, counts)
            rows = connection.execute(_SEARCH, (narrow, k)).fetchall() if narrow else []
            if len(rows) < k:
                rows = connection.execute(_SEARCH, (query, k)).fetchall()
        except store.UNREADABLE as e:
            raise DataError(
                f"cannot search {self.path} ({e}); rebuild it with `edgeqa index PATH... -o {self.path}`"
            ) from e
        return [
            Passage(
                id=row[0],
                file=row[1],
                title=row[2],
                heading=row[3],
                start_line=row[4],
                end_line=row[5],
                unit=row[6],
                text=row[7],
                rank=n,
                score=-row[8],
            )
            for n, row in enumerate(rows, 1)
        ]

    def close(self) -> None:
        with self._lock:
            for held in self._held.values():
                _close(*held)
            self._held.clear()
        self._local = threading.local()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(connection: sqlite3.Connection, terms: _Terms) -> None:
    connection.close()
    terms.close()


def _identity(path: Path) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (0, 0)
    return (stat.st_dev, stat.st_ino)


def _data_version(connection: sqlite3.Connection) -> int:
    """A number that changes when another connection (any process) commits to the database."""
    return int(connection.execute("PRAGMA data_version").fetchone()[0])


def _open(path: Path, tokenizer_sha256: str | None, tokenizer_name: str) -> tuple[sqlite3.Connection, store.IndexInfo]:
    """A checked connection to the index, refused (and closed) if it was sized for another tokenizer."""
    connection, info = store.open_checked(path)
    if tokenizer_sha256 is not None:
        try:
            store.check_tokenizer(info, path, (tokenizer_sha256,), tokenizer_name)
        except DataError:
            connection.close()
            raise
    return connection, info
