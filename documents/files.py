"""Finding the files under the paths given, and turning one file's bytes into a `Document` or a reason to skip it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from edgeqa.documents.formats import TEXT_PARSERS, Document, kind_of, parse_pdf
from edgeqa.errors import DataError, MissingExtraError

#: Bytes looked at to tell a binary file from text.
SNIFF_BYTES = 8192
_TEXT_CONTROLS = frozenset(b"\t\n\r\f\b\x1b")


@dataclass(frozen=True)
class SourceFile:
    """A file to index.

    Attributes:
        key: Its resolved absolute path: what `--update` matches on.
        shown: Its path as reached from the paths given: what citations print.
        kind: Its format (`text`, `markdown`, `html`, `jsonl`, `pdf`).
    """

    key: str
    shown: str
    kind: str


class Skip(Exception):
    """A file that is not indexed, and why (the summary counts and names it)."""


def discover(paths: list[Path], output: Path | None = None) -> tuple[list[SourceFile], list[tuple[str, str]]]:
    """The supported files under `paths` (folders walked, hidden entries and the index `output` with its
    -wal and -shm ignored) and the files skipped, with why.

    Raises:
        DataError: a path does not exist.
    """
    found: dict[str, SourceFile] = {}
    skipped: list[tuple[str, str]] = []

    index = output.resolve() if output is not None else None
    own_files = {f"{index.name}{suffix}" for suffix in ("", "-wal", "-shm", "-journal")} if index else set()

    def consider(path: Path) -> None:
        if index is not None and path.name in own_files and path.parent.resolve() == index.parent:
            return
        kind = kind_of(path)
        if kind is None:
            skipped.append((str(path), f"unsupported file type {path.suffix or '(no suffix)'}"))
            return
        try:
            mode = path.stat().st_mode
        except OSError as e:  # a broken link, a folder we may not enter
            skipped.append((str(path), f"unreadable ({e.strerror or e})"))
            return
        if not stat.S_ISREG(mode):  # a pipe or a device would block or never end
            skipped.append((str(path), "not a regular file"))
            return
        key = str(path.resolve())
        found.setdefault(key, SourceFile(key, str(path), kind))

    for root in paths:
        root = Path(root)
        if root.is_dir():

            def unreadable(error: OSError) -> None:
                skipped.append((str(error.filename), f"unreadable folder ({error.strerror or error})"))

            for folder, dirs, names in os.walk(root, onerror=unreadable):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for link in [d for d in dirs if os.path.islink(os.path.join(folder, d))]:  # os.walk never enters them
                    skipped.append((os.path.join(folder, link), "a link to a folder, not followed; give its target"))
                for name in sorted(names):
                    if not name.startswith("."):
                        consider(Path(folder) / name)
        elif root.exists():
            consider(root)
        else:
            raise DataError(f"{root} does not exist; give files or folders to index")
    return list(found.values()), skipped


def looks_binary(data: bytes) -> bool:
    """A NUL byte, or many control bytes, in the first bytes (UTF-16 with a byte-order mark is text)."""
    head = data[:SNIFF_BYTES]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for byte in head if byte < 32 and byte not in _TEXT_CONTROLS)
    return controls > len(head) // 10


def decode(data: bytes) -> tuple[str, str | None]:
    """The text of `data` and a warning if it was not valid UTF-8 (undecodable bytes become U+FFFD)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
        return text, ("not valid UTF-16; undecodable bytes replaced with U+FFFD" if "\ufffd" in text else None)
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        text = data.decode("utf-8-sig", errors="replace")
        return text, f"not valid UTF-8 (first bad byte at offset {e.start}); undecodable bytes replaced with U+FFFD"


def read_document(source: SourceFile, data: bytes) -> Document:
    """Parse one file's bytes.

    Raises:
        Skip: the file is binary, empty of text, or its format cannot be read.
    """
    title = Path(source.shown).stem
    if source.kind == "pdf":
        try:
            document = parse_pdf(data, title)
        except MissingExtraError as e:
            raise Skip(str(e)) from e
        except Exception as e:  # noqa: BLE001 - pypdf raises many types on a damaged file
            raise Skip(f"unreadable PDF ({type(e).__name__}: {str(e)[:200]})") from e
    else:
        if looks_binary(data):
            raise Skip("binary content")
        text, warning = decode(data)
        document = TEXT_PARSERS[source.kind](text, title)
        if warning:
            document.warnings.insert(0, warning)
    if not document.blocks:
        raise Skip("no text" + (f" ({'; '.join(document.warnings)})" if document.warnings else ""))
    return document
