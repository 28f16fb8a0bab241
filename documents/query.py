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

#: BM25 weights of the full-text columns: the file's title, the section heading, the passage text.
COLUMN_WEIGHTS = (2.0, 2.0, 1.0)
#: Terms kept from a question (the rarest matter; a pasted page should not make a huge query).
MAX_TERMS = 32
#: Passages one search may return.
MAX_K = 100

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


def fts_query(question: str) -> str | None:
    """An FTS5 query matching any of the question's words, each a quoted string: the user's text is never
    read as FTS5 syntax (operators, columns, prefixes). None when the question has no words."""
    words = [w.lower() for w in _WORD.findall(question)]
    terms = [w for w in words if w not in STOPWORDS] or words
    unique = list(dict.fromkeys(terms))[:MAX_TERMS]
    if not unique:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in unique)


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
    """A read-only view of an index file, safe to share between threads (one connection each).

    An `edgeqa index --update` is seen by the next search; an index rebuilt (replaced) under a running
    reader is reopened by the next search.
    """

    def __init__(self, path: Path, info: store.IndexInfo, tokenizer_sha256: str | None = None) -> None:
        self.path = path
        self.info = info
        self._tokenizer_sha256 = tokenizer_sha256
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    @classmethod
    def open(cls, path: Path | str, tokenizer_sha256: str | None = None, tokenizer_name: str = "the reader") -> Index:
        """Open and check an index.

        Args:
            tokenizer_sha256: The reader's tokenizer.json sha256; an index sized with another is refused.

        Raises:
            DataError: missing, not an edgeqa index, damaged, of another format, or sized for another tokenizer.
        """
        path = Path(path)
        connection, info = store.open_checked(path)
        if tokenizer_sha256 is not None:
            try:
                store.check_tokenizer(info, path, tokenizer_sha256, tokenizer_name)
            except DataError:
                connection.close()
                raise
        index = cls(path, info, tokenizer_sha256)
        index._adopt(connection)
        return index

    def _adopt(self, connection: sqlite3.Connection) -> None:
        self._local.connection = connection
        self._local.identity = _identity(self.path)
        with self._lock:
            self._connections.append(connection)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.identity == _identity(self.path):
            return connection
        if connection is not None:  # the file was replaced by a rebuild: read the new one
            connection.close()
            with self._lock:
                self._connections.remove(connection)
        connection, info = store.open_checked(self.path)
        if self._tokenizer_sha256 is not None:
            store.check_tokenizer(info, self.path, self._tokenizer_sha256, "the reader")
        self.info = info
        self._adopt(connection)
        return connection

    def search(self, question: str, k: int = 4) -> list[Passage]:
        """The `k` passages that best match the question by BM25, best first; [] when none shares a word with it.

        Raises:
            InputError: `k` is out of range.
        """
        if not 1 <= k <= MAX_K:
            raise InputError(f"k is {k}; ask for 1 to {MAX_K} passages")
        query = fts_query(question)
        if query is None:
            return []
        weights = ", ".join(str(w) for w in COLUMN_WEIGHTS)
        try:
            rows = (
                self._connection()
                .execute(
                    f"""
                SELECT p.id, f.shown, p.title, p.heading, p.start_line, p.end_line, f.unit, p.text, hit.score
                FROM (SELECT rowid, bm25(passages_fts, {weights}) AS score FROM passages_fts
                      WHERE passages_fts MATCH ? ORDER BY score LIMIT ?) AS hit
                JOIN passages AS p ON p.id = hit.rowid
                JOIN files AS f ON f.id = p.file_id
                ORDER BY hit.score
                """,
                    (query, k),
                )
                .fetchall()
            )
        except sqlite3.DatabaseError as e:
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
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _identity(path: Path) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (0, 0)
    return (stat.st_dev, stat.st_ino)
