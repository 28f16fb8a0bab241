"""Writing files and folders so that readers see the old content or the new one, never a part (stdlib only)."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import socket
from pathlib import Path


def temporary_pattern(name: str) -> str:
    """A regular expression for the temporary file names `write_atomic` gives a file called `name`."""
    return rf"\.{re.escape(name)}\.[0-9a-f]+\.tmp"


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


def replace_folder(finished: Path, target: Path) -> None:
    """Move the folder `finished` to `target`, replacing what is there (a folder, or a link to one), then
    delete the old one.

    On Linux the two are swapped in one step (`renameat2` with `RENAME_EXCHANGE`), so `target` is never
    missing; elsewhere the old one is first moved aside to `set_aside(target)`, where a kill between
    the two moves leaves it (and the next `replace_folder` removes it).
    """
    finished, target = Path(finished), Path(target)
    aside = set_aside(target)
    remove(aside)
    if not (target.exists() or target.is_symlink()):
        finished.rename(target)
    elif _swap(finished, target):
        remove(finished)
    else:
        target.rename(aside)
        finished.rename(target)
        remove(aside)


def set_aside(target: Path) -> Path:
    """Where `replace_folder` moves the folder it replaces, where the platform cannot swap two folders."""
    return target.with_name(f".{target.name}.old")


def remove(path: Path) -> None:
    """Delete a folder with what it holds, or a file or link (never what a link points to); nothing there is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _swap(first: Path, second: Path) -> bool:
    """Exchange two paths in one step; False where the platform or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a libc without it
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM):  # a file system or sandbox without the exchange
        return False
    raise OSError(code, os.strerror(code), str(second))


def owned_prefix(stem: str) -> str:
    """The start of a temporary name that says whose it is, for `leftovers`: `{stem}-{pid}@{host}-`."""
    return f"{stem}-{os.getpid()}@{_host()}-"


def leftovers(folder: Path, stem: str) -> list[Path]:
    """What killed writers left in `folder`: entries named by `owned_prefix(stem)` whose process, on this
    machine, has ended (another machine's or container's, on a shared disk, are left alone)."""
    pattern = re.compile(re.escape(stem) + r"-(?P<pid>\d+)@(?P<host>[\w.]+)-\w+")
    found = []
    for path in Path(folder).iterdir():
        match = pattern.fullmatch(path.name)
        if match and match["host"] == _host() and not process_alive(int(match["pid"])):
            found.append(path)
    return found


def _host() -> str:
    """This machine's name as a temporary name carries it (letters, digits, '_' and '.')."""
    return re.sub(r"[^\w.]", "_", socket.gethostname()) or "localhost"


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # none, or no process could have that id
        return False
    except PermissionError:  # another user's
        return True
    return True
