"""`build_index`: files to passages to an index file, built anew beside the target and then copied into it
under SQLite's locks (renamed into place where there is no index yet), or updated in place in one
transaction (`update=True`)."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tokenizers import Tokenizer

from edgeqa.atomic import process_alive
from edgeqa.documents import store
from edgeqa.documents.files import Skip, SourceFile, discover, read_document
from edgeqa.documents.split import DEFAULT_PASSAGE_TOKENS, check_passage_tokens, default_overlap, split_document
from edgeqa.documents.summary import IndexSummary, Progress
from edgeqa.errors import ConfigError, DataError


def build_index(
    paths: Iterable[Path | str],
    output: Path | str,
    tokenizer: Path | str,
    passage_tokens: int | None = None,
    overlap_tokens: int | None = None,
    update: bool = False,
    progress: Callable[[Progress], None] | None = None,
    tokenizer_name: str | None = None,
) -> IndexSummary:
    """Index the files under `paths` into the SQLite file `output`.

    Args:
        tokenizer: The reader's tokenizer.json; passages are measured in its tokens.
        passage_tokens: The most tokens a passage holds [DEFAULT_PASSAGE_TOKENS; with `update`, the index's].
        overlap_tokens: The most tokens a passage repeats from the one before [an eighth of `passage_tokens`].
        update: Re-index only changed files and drop files gone from `paths`, in one transaction (no `paths`:
            the paths the index was built from).
        progress: Called after each file.
        tokenizer_name: A label stored with the tokenizer's sha256 [the tokenizer's file path].

    Raises:
        DataError: no text to index, a path is missing, or `output` is not an edgeqa index (or another format's).
        ConfigError: a bad tokenizer or budget, or a budget or tokenizer other than the index's with `update`.
    """
    started = time.perf_counter()
    output, tokenizer_path = Path(output), Path(tokenizer)
    roots = [Path(p) for p in paths]
    tok = store.load_tokenizer(tokenizer_path)
    accepted = store.fingerprints(tokenizer_path, tok)
    sha256 = accepted[0]
    name = tokenizer_name or str(tokenizer_path)
    if update and output.exists():
        connection, _ = store.open_checked(output, write=True)
        try:
            info = _lock_for_update(connection, output)
            store.check_tokenizer(info, output, accepted, name)
            if passage_tokens is not None and passage_tokens != info.passage_tokens:
                raise ConfigError(
                    f"{output} holds passages of {info.passage_tokens} tokens, not {passage_tokens}; "
                    "rebuild it without --update to change the size"
                )
            roots = roots or [_from_here(Path(r)) for r in info.roots]  # `--update` alone: the paths it was built from
            sources, skipped = discover(roots, output)
            summary = IndexSummary(output, info.passage_tokens, skipped=skipped)
            new_info = store.IndexInfo(**{**info.__dict__, "roots": _absolute(roots)})
            try:
                _write(connection, sources, tok, new_info, summary, progress, update=True)
            except sqlite3.OperationalError as e:  # locked by another writer past the timeout, disk full, ...
                raise DataError(f"cannot update {output} ({e}); it is unchanged: {_advice(e)}") from e
        finally:
            connection.close()
    else:
        if not roots:
            raise DataError("no files or folders given to index")
        budget = passage_tokens if passage_tokens is not None else DEFAULT_PASSAGE_TOKENS
        check_passage_tokens(budget)  # before the overlap, which a bad size would make nonsense of
        overlap = overlap_tokens if overlap_tokens is not None else default_overlap(budget)
        if not 0 <= overlap < budget:
            raise ConfigError(f"overlap_tokens is {overlap}; give 0 to {budget - 1} (less than passage_tokens)")
        from edgeqa import __version__

        sources, skipped = discover(roots, output)
        info = store.IndexInfo(store.FORMAT_VERSION, name, sha256, budget, overlap, _absolute(roots), __version__)
        summary = IndexSummary(output, budget, skipped=skipped)
        try:
            _build_new(output, sources, tok, info, summary, progress)
        except (sqlite3.OperationalError, OSError) as e:  # disk full, a folder we may not write, ...
            problem = e.strerror if isinstance(e, OSError) and e.strerror else e
            advice = f": {_advice(e)}" if _disk_full(e) else ""
            unchanged = f"the previous index, if any, is unchanged{advice}"
            raise DataError(f"cannot write {output} ({problem}); {unchanged}") from e
    summary.seconds = time.perf_counter() - started
    return summary


def _lock_for_update(connection: sqlite3.Connection, output: Path) -> store.IndexInfo:
    """Take the index's write lock, then read what it says about itself: a rebuild cannot come between the
    two (an update would otherwise write passages, paths and sizes of the index it first saw over it).

    Raises:
        DataError: another process holds the lock past `store.BUSY_TIMEOUT_MS`, or `read_info` refuses it.
    """
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        raise DataError(f"cannot update {output} ({e}); it is unchanged: {_advice(e)}") from e
    return store.read_info(connection, output)


def _from_here(root: Path) -> Path:
    """A stored root relative to this folder where it lies below it: the files found under it are then named
    as a build from here named them (`docs/a.md`, not `/home/me/docs/a.md`)."""
    try:
        return root.relative_to(Path.cwd())
    except ValueError:
        return root


def _absolute(roots: list[Path]) -> tuple[str, ...]:
    """The paths as stored: absolute, so that `--update` alone finds them from any folder."""
    return tuple(os.path.abspath(root) for root in roots)


def _build_new(
    output: Path,
    sources: list[SourceFile],
    tok: Tokenizer,
    info: store.IndexInfo,
    summary: IndexSummary,
    progress: Callable[[Progress], None] | None,
) -> None:
    """Write a new index beside `output`, then put it in place: a crash leaves the old one whole."""
    readable = _check_replaceable(output) if output.exists() else False
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(output)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.building")
    temporary.unlink(missing_ok=True)
    connection = store.connect(temporary, write=True)
    try:
        if readable:
            connection.execute(f"PRAGMA page_size = {_page_size(output)}")  # a backup into WAL needs the same
        connection.execute("PRAGMA journal_mode = OFF")  # the file is thrown away on failure anyway
        connection.execute("PRAGMA synchronous = OFF")
        store.create_schema(connection, info)
        _write(connection, sources, tok, info, summary, progress, update=False)
        connection.execute("INSERT INTO passages_fts(passages_fts) VALUES ('optimize')")
        connection.execute("PRAGMA journal_mode = WAL")
        # copied into a readable index; renamed over where there is none, or one this user may not write
        if readable and output.exists() and os.access(output, os.W_OK):
            _copy_into(connection, output)
            connection.close()
            temporary.unlink()
        else:
            connection.close()
            _rename_into_place(temporary, output)
    except BaseException:
        connection.close()
        temporary.unlink(missing_ok=True)
        raise


class _Busy(Exception):
    """Another connection kept the index locked for longer than `store.BUSY_TIMEOUT_MS`."""


def _copy_into(source: sqlite3.Connection, output: Path) -> None:
    """Copy the new index into the existing one in one write transaction, under SQLite's own locks.

    A reader keeps the snapshot it has and its next one is the new index, never a mix; a writer (an
    `--update`, another rebuild) is waited for up to `store.BUSY_TIMEOUT_MS`. SQLite sets the file's size to
    the new index's when its write-ahead log is next emptied (at once if no reader is in the middle of one).

    Raises:
        DataError: another process kept writing the index past the wait; it is unchanged.
    """
    destination = store.connect(output, write=True)
    try:
        try:
            source.backup(destination, pages=-1, progress=_stop_if_busy)  # one step: all pages, one transaction
        except _Busy:
            raise DataError(
                f"{output} is being written by another process (an `edgeqa index` or `--update`); it is "
                "unchanged: try again when that is done"
            ) from None
        destination.execute("PRAGMA busy_timeout = 0")  # empty the log now if no reader needs it, else later
        destination.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        destination.close()


def _stop_if_busy(status: int, remaining: int, total: int) -> None:
    """A backup's progress: SQLite has already waited the busy timeout when it reports busy, so stop."""
    if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        raise _Busy


def _rename_into_place(temporary: Path, output: Path) -> None:
    """Rename the new index to `output`, where there is none (or only one SQLite cannot read): a log or
    shared-memory file of an old one left there would otherwise be read as the new one's."""
    with open(temporary, "rb") as f:
        os.fsync(f.fileno())
    for leftover in ("-wal", "-shm"):
        output.with_name(output.name + leftover).unlink(missing_ok=True)
    os.replace(temporary, output)
    _fsync_folder(output.parent)


def _write(
    connection: sqlite3.Connection,
    sources: list[SourceFile],
    tok: Tokenizer,
    info: store.IndexInfo,
    summary: IndexSummary,
    progress: Callable[[Progress], None] | None,
    update: bool,
) -> None:
    """Index `sources` in one transaction (begun here unless an update began it already); with `update`, only
    what changed, dropping files no longer given."""
    if not connection.in_transaction:
        connection.execute("BEGIN IMMEDIATE")
    try:
        known = {
            row[0]: row[1:]
            for row in connection.execute("SELECT key, id, size, mtime_ns, sha256 FROM files").fetchall()
        }
        sizes = {}
        for source in sources:
            try:
                sizes[source.key] = os.stat(source.key).st_size
            except OSError:
                sizes[source.key] = 0
        total, done_bytes, changes = sum(sizes.values()), 0, connection.total_changes
        for number, source in enumerate(sources, 1):
            done_bytes += sizes[source.key]
            _index_one(connection, source, known.pop(source.key, None), tok, info, summary)
            if progress:
                progress(Progress(number, len(sources), done_bytes, total, source.shown))
        for key, (file_id, *_rest) in known.items():
            summary.removed.append(_delete_file(connection, file_id) or key)
        if connection.total_changes != changes:
            store.count_terms(connection)
        if update:
            store.write_meta(connection, info)
        summary.files = connection.execute("SELECT count(*) FROM files").fetchone()[0]
        summary.passages = connection.execute("SELECT count(*) FROM passages").fetchone()[0]
        if not summary.passages:
            raise DataError(_empty_message(summary))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:  # SQLite has rolled back already after some errors (a full disk)
            connection.execute("ROLLBACK")
        raise


def _index_one(
    connection: sqlite3.Connection,
    source: SourceFile,
    known: tuple[int, int, int, str] | None,
    tok: Tokenizer,
    info: store.IndexInfo,
    summary: IndexSummary,
) -> None:
    try:
        with open(source.key, "rb") as f:
            stat = os.fstat(f.fileno())
            if known and (known[1], known[2]) == (stat.st_size, stat.st_mtime_ns):
                summary.unchanged += 1
                return
            data = f.read()
    except OSError as e:
        if known:
            _delete_file(connection, known[0])
        summary.skipped.append((source.shown, f"unreadable ({e.strerror or e})"))
        return
    summary.bytes_read += len(data)
    digest = hashlib.sha256(data).hexdigest()
    if known and known[3] == digest:
        connection.execute("UPDATE files SET mtime_ns = ? WHERE id = ?", (stat.st_mtime_ns, known[0]))
        summary.unchanged += 1
        return
    if known:
        _delete_file(connection, known[0])
    try:
        document = read_document(source, data)
    except Skip as e:
        summary.skipped.append((source.shown, str(e)))
        return
    pieces = split_document(document, tok, info.passage_tokens, info.overlap_tokens)
    cursor = connection.execute(
        "INSERT INTO files (key, shown, kind, unit, title, size, mtime_ns, sha256, warnings) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (source.key, source.shown, source.kind, document.unit, document.title)
        + (stat.st_size, stat.st_mtime_ns, digest, "\n".join(document.warnings)),
    )
    file_id = cursor.lastrowid
    first = connection.execute("SELECT coalesce(max(id), 0) + 1 FROM passages").fetchone()[0]
    rows = [
        (first + n, file_id, n, document.title, piece.heading, piece.start_line, piece.end_line, piece.text)
        for n, piece in enumerate(pieces)
    ]
    connection.executemany(
        "INSERT INTO passages (id, file_id, seq, title, heading, start_line, end_line, text) VALUES (?,?,?,?,?,?,?,?)",
        rows,
    )
    connection.executemany(
        "INSERT INTO passages_fts (rowid, title, heading, text) VALUES (?,?,?,?)",
        [(r[0], r[3], r[4], r[7]) for r in rows],
    )
    summary.indexed.append(source.shown)
    summary.passages_added += len(rows)
    summary.warnings.extend(f"{source.shown}: {w}" for w in document.warnings)


def _delete_file(connection: sqlite3.Connection, file_id: int) -> str:
    """Drop a file and its passages (from the full-text index too, which needs the old values); returns its path."""
    connection.execute(
        "INSERT INTO passages_fts (passages_fts, rowid, title, heading, text) "
        "SELECT 'delete', id, title, heading, text FROM passages WHERE file_id = ?",
        (file_id,),
    )
    connection.execute("DELETE FROM passages WHERE file_id = ?", (file_id,))
    row = connection.execute("SELECT shown FROM files WHERE id = ?", (file_id,)).fetchone()
    connection.execute("DELETE FROM files WHERE id = ?", (file_id,))
    return str(row[0]) if row else ""


def _empty_message(summary: IndexSummary) -> str:
    reasons = "; ".join(f"{p}: {r}" for p, r in summary.skipped[:5])
    more = f" (and {len(summary.skipped) - 5} more)" if len(summary.skipped) > 5 else ""
    found = f"; skipped {reasons}{more}" if reasons else ""
    return (
        f"nothing to index: no text found in the paths given{found}; "
        "give .txt, .md, .html, .jsonl or .pdf files (PDF needs `pip install 'edgeqa[pdf]'`)"
    )


def _check_replaceable(output: Path) -> bool:
    """Refuse to overwrite a file that is not an edgeqa index (of any format version); say whether SQLite
    can read it (True) or it is an index too damaged to open (False: it is replaced by renaming).

    Raises:
        DataError: `output` is not an edgeqa index, or another process holds it locked.
    """
    try:
        connection = sqlite3.connect(store.uri(output, mode="ro"), uri=True, timeout=store.BUSY_TIMEOUT_MS / 1000)
        try:
            row = connection.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        finally:
            connection.close()
    except (sqlite3.Error, *store.UNREADABLE) as e:
        if store.error_code(e) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise DataError(f"{output} is being written by another process; try again when that is done") from e
        if store.is_damaged_index(output, e):
            return False
        row = None
    if not row or row[0] != store.FORMAT_NAME:
        raise DataError(f"{output} exists and is not an edgeqa index; choose another -o or remove it first")
    return True


def _page_size(output: Path) -> int:
    with open(output, "rb") as f:
        return store.page_size(f.read(100))


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, sqlite3.Error):
        return store.error_code(error) == sqlite3.SQLITE_FULL
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _advice(error: BaseException) -> str:
    """What to do after a write failed with `error`."""
    if _disk_full(error):
        return "free space on its disk (an update needs room for its log, a rebuild for about twice the index)"
    return "try again"


def _remove_stale_builds(output: Path) -> None:
    """Remove temporary files (and their -wal, -shm) left beside `output` by builds that were killed."""
    pattern = re.compile(re.escape(f".{output.name}.") + r"(\d+)\.building(-wal|-shm|-journal)?")
    for leftover in output.parent.glob(f".{output.name}.*.building*"):
        match = pattern.fullmatch(leftover.name)
        if match and not process_alive(int(match.group(1))):
            leftover.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
