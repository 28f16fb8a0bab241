"""Writing a file so that readers see the old content or the new one, never a part (stdlib only)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file in the same folder and a rename.

    The temporary file is created with `open(..., "x")`, so the result has the permissions of any
    new file (the umask's), not `mkstemp`'s owner-only ones: an artifact's manifest stays readable
    by the user who serves it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unwritable(path: Path) -> str | None:
    """Why a file cannot be written at `path` (a folder is there, a file or a folder this user may not
    write stands where its folder would be), or None: checked before long work whose result goes there."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    return None
