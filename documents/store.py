"""The index file: one SQLite database (FTS5, BM25), its schema, and the checks made before it is read or changed."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import urllib.parse
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from edgeqa.errors import ConfigError, DataError

#: What `meta.format` holds in every edgeqa index.
FORMAT_NAME = "edgeqa-index"
#: The layout this edgeqa writes and reads; any other is refused with advice.
FORMAT_VERSION = 1
#: How long a writer waits for another writer before giving up.
BUSY_TIMEOUT_MS = 10_000

#: Text from edgeqa's schema that SQLite keeps on an index's first page: a file too damaged to open is
#: known for an edgeqa index by it (and so may be rebuilt over).
SCHEMA_MARKERS = (
    b"CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    b"CREATE VIRTUAL TABLE passages_fts USING fts5(",
)

#: How FTS5 cuts text into terms, for the index and for questions alike.
TOKENIZE = "porter unicode61 remove_diacritics 2"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,        -- resolved absolute path: what --update matches on
    shown TEXT NOT NULL,             -- the path citations print
    kind TEXT NOT NULL,
    unit TEXT NOT NULL,              -- what start_line/end_line count: line or page
    title TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    warnings TEXT NOT NULL DEFAULT ''
);
CREATE TABLE passages (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id),
    seq INTEGER NOT NULL,
    title TEXT NOT NULL,             -- the file's title, repeated so that FTS5 reads it from here
    heading TEXT NOT NULL,
    start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX passages_by_file ON passages(file_id);
-- external content: the text is stored once, in passages; deletes name the old values (see build.py)
CREATE VIRTUAL TABLE passages_fts USING fts5(
    title, heading, text, content='passages', content_rowid='id', tokenize="{tokenize}"
);
-- how many passages hold each term (fts5vocab counts by reading the term's whole list, so the counts
-- are copied into term_counts after each change): a search lets only its rarer words pick candidates
CREATE VIRTUAL TABLE passages_vocab USING fts5vocab(passages_fts, 'row');
CREATE TABLE term_counts (term TEXT PRIMARY KEY, passages INTEGER NOT NULL) WITHOUT ROWID;
"""


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer.json, with truncation and padding off so that counts are true.

    Raises:
        ConfigError: the file is missing or not a tokenizer.
    """
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
        raise ConfigError(f"cannot load the tokenizer {path} ({e}); give a tokenizer.json or --artifact") from e
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def tokenizer_sha256(path: Path) -> str:
    """The fingerprint an index records of the tokenizer its passages were sized with: the sha256 of the
    tokenizer as `tokenizers` writes it, truncation and padding off (`load_tokenizer`).

    The same tokenizer saved by another program has the same fingerprint (`edgeqa export` re-saves
    FLAN-T5's with other float formatting and a truncation block); one that tokenizes otherwise has another.

    Raises:
        ConfigError: the file is missing or not a tokenizer.
    """
    return _fingerprint(load_tokenizer(path))


def fingerprints(path: Path, loaded: Tokenizer | None = None) -> tuple[str, str]:
    """What an index may have recorded of this tokenizer: its fingerprint (`tokenizer_sha256`), or, for an
    index built by edgeqa before that, the sha256 of the file itself. `loaded`: the file as
    `load_tokenizer` read it, if the caller has it already."""
    with open(path, "rb") as f:
        return _fingerprint(loaded or load_tokenizer(path)), hashlib.file_digest(f, "sha256").hexdigest()


def _fingerprint(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class IndexInfo:
    """What an index says about itself.

    Attributes:
        tokenizer_name: A label for the tokenizer (the artifact or file it came from).
        tokenizer_sha256: The fingerprint (`tokenizer_sha256`) of the tokenizer the passages were sized with.
        passage_tokens: The most tokens a passage holds.
        overlap_tokens: The most tokens a passage repeats from the one before.
        roots: The paths given when the index was built, made absolute.
    """

    format_version: int
    tokenizer_name: str
    tokenizer_sha256: str
    passage_tokens: int
    overlap_tokens: int
    roots: tuple[str, ...]
    edgeqa_version: str
    files: int = 0
    passages: int = 0


def connect(path: Path, write: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode (readers keep their snapshot while a writer works); autocommit off by hand.

    On a read-only mount (a `:ro` volume, a squashfs image), where WAL's shared-memory file cannot be
    made, a reader reads the file as immutable: nothing can change it there.

    Raises:
        DataError: a reader cannot create that file in a folder others may still write.
    """
    connection = _connect(str(path), uri=False)
    if write:
        return connection
    connection.execute("PRAGMA query_only = 1")
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the file and its WAL index
    except UNREADABLE:
        folder = Path(path).parent
        if os.access(folder, os.W_OK):
            return connection  # not a database, or damaged: `read_info` says which
        connection.close()
        if not os.statvfs(folder).f_flag & os.ST_RDONLY:  # an update could come: an immutable read would miss it
            raise DataError(
                f"cannot read {path}: its folder {folder} is not writable by this user, and SQLite needs to "
                f"create {Path(path).name}-shm there beside the index; let this user write the folder, or "
                "serve a copy from a read-only mount"
            ) from None
        connection = _connect(uri(path, immutable=1), uri=True)
        connection.execute("PRAGMA query_only = 1")
    return connection


def _connect(target: str, uri: bool) -> sqlite3.Connection:
    timeout = BUSY_TIMEOUT_MS / 1000
    connection = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=timeout, uri=uri)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return connection


def uri(path: Path, **parameters: object) -> str:
    """A SQLite `file:` URI for `path`, quoted (a `#`, `?` or `%` in a name would otherwise cut it short)."""
    query = urllib.parse.urlencode(parameters)
    return f"file:{urllib.parse.quote(str(Path(path).absolute()))}" + (f"?{query}" if query else "")


def create_schema(connection: sqlite3.Connection, info: IndexInfo) -> None:
    connection.executescript(SCHEMA.format(tokenize=TOKENIZE))
    write_meta(connection, info)


def count_terms(connection: sqlite3.Connection) -> None:
    """Refresh `term_counts` from the full-text index (about a second per 100k passages)."""
    connection.execute("DELETE FROM term_counts")
    connection.execute("INSERT INTO term_counts (term, passages) SELECT term, doc FROM passages_vocab")


def write_meta(connection: sqlite3.Connection, info: IndexInfo) -> None:
    rows = {
        "format": FORMAT_NAME,
        "format_version": str(info.format_version),
        "tokenizer_name": info.tokenizer_name,
        "tokenizer_sha256": info.tokenizer_sha256,
        "passage_tokens": str(info.passage_tokens),
        "overlap_tokens": str(info.overlap_tokens),
        "roots": "\n".join(info.roots),
        "edgeqa_version": info.edgeqa_version,
    }
    connection.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows.items())


#: What reading a damaged index raises: SQLite's errors, and a `UnicodeDecodeError` where the damage reaches
#: the text of SQLite's own message (a schema line whose bytes are no longer UTF-8).
UNREADABLE = (sqlite3.DatabaseError, UnicodeDecodeError)


def error_code(error: Exception) -> int:
    """SQLite's primary result code for `error` (`sqlite3.SQLITE_BUSY`, `SQLITE_FULL`, ...), or -1; a message
    that cannot be decoded is SQLite's report of a damaged file, `SQLITE_CORRUPT`."""
    if isinstance(error, UnicodeDecodeError):
        return sqlite3.SQLITE_CORRUPT
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else -1


def page_size(header: bytes) -> int:
    """The page size given in a SQLite file's first 100 bytes."""
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def is_damaged_index(path: Path, error: Exception) -> bool:
    """Whether `error`, met reading `path`, says it is damaged while its first page still carries edgeqa's
    schema (`SCHEMA_MARKERS`): an index to rebuild, never another program's file."""
    if error_code(error) not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return False
    try:
        with open(path, "rb") as f:
            header = f.read(100)
            first_page = header + f.read(page_size(header) - len(header))
    except OSError:
        return False
    return header.startswith(b"SQLite format 3\x00") and all(m in first_page for m in SCHEMA_MARKERS)


def read_info(connection: sqlite3.Connection, path: Path) -> IndexInfo:
    """Check that `path` is an edgeqa index of this format and say what it holds.

    Raises:
        DataError: the file is not a SQLite database, not an edgeqa index, damaged, or of another format.
    """
    rebuild = f"rebuild it with `edgeqa index PATH... -o {path}`"
    foreign = f"{path} is a SQLite database but not an edgeqa index; give an index built by `edgeqa index`"
    try:
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    except UNREADABLE as e:
        if "no such table" in str(e):
            raise DataError(foreign) from e
        if is_damaged_index(path, e):
            raise DataError(f"{path} is a damaged edgeqa index ({e}); {rebuild}") from e
        raise DataError(  # `edgeqa index` will not overwrite what it cannot tell is an index
            f"{path} is not an edgeqa index or is damaged beyond recognition ({e}); give an index built by "
            f"`edgeqa index`, or remove it and {rebuild}"
        ) from e
    if meta.get("format") != FORMAT_NAME:
        raise DataError(foreign)
    try:
        version = int(meta["format_version"])
        info = IndexInfo(
            format_version=version,
            tokenizer_name=meta["tokenizer_name"],
            tokenizer_sha256=meta["tokenizer_sha256"],
            passage_tokens=int(meta["passage_tokens"]),
            overlap_tokens=int(meta["overlap_tokens"]),
            roots=tuple(r for r in meta["roots"].split("\n") if r),
            edgeqa_version=meta["edgeqa_version"],
        )
    except (KeyError, ValueError) as e:
        raise DataError(f"{path} has a damaged header (meta {e}); {rebuild}") from e
    if version != FORMAT_VERSION:
        advice = "upgrade edgeqa or rebuild it" if version > FORMAT_VERSION else "rebuild it"
        raise DataError(
            f"{path} is an index of format {version}; this edgeqa reads format {FORMAT_VERSION}: {advice} "
            f"with `edgeqa index {' '.join(info.roots) or 'PATH...'} -o {path}`"
        )
    try:
        files = connection.execute("SELECT count(*) FROM files").fetchone()[0]
        passages = connection.execute("SELECT count(*) FROM passages").fetchone()[0]
    except UNREADABLE as e:
        raise DataError(f"{path} is damaged ({e}); {rebuild}") from e
    return IndexInfo(**{**info.__dict__, "files": files, "passages": passages})


def check_tokenizer(info: IndexInfo, path: Path, accepted: Collection[str], name: str) -> None:
    """Refuse an index sized for another tokenizer than the one `accepted` fingerprints (`fingerprints`).

    Raises:
        DataError: naming both tokenizers and the command that rebuilds the index.
    """
    if info.tokenizer_sha256 not in accepted:
        raise DataError(
            f"{path} was sized with the tokenizer of {info.tokenizer_name} (sha256 {info.tokenizer_sha256[:12]}), "
            f"not {name}'s ({next(iter(accepted), '?')[:12]}); rebuild it with "
            f"`edgeqa index {' '.join(info.roots) or 'PATH...'} -o {path} --artifact ARTIFACT` (or --tokenizer FILE)"
        )


def open_checked(path: Path, write: bool = False) -> tuple[sqlite3.Connection, IndexInfo]:
    """Open an existing index and check it (see `read_info`).

    Raises:
        DataError: the file is missing or is refused by `read_info`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no index at {path}; build one with `edgeqa index PATH... -o {path}`")
    try:
        connection = connect(path, write=write)
    except sqlite3.Error as e:
        raise DataError(f"cannot open the index {path} ({e})") from e
    try:
        info = read_info(connection, path)
    except BaseException:
        connection.close()
        raise
    return connection, info
