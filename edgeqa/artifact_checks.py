"""What the loader checks before it trusts an artifact folder (stdlib only).

An artifact is copied, downloaded and mounted from elsewhere, so every byte of it is untrusted
input. These checks keep the loader inside the folder and its memory bounded:

- every file the manifest names is a plain file name (letters, digits, `.`, `_`, `-`; no
  separators, no `..`, not hidden) of a role the format knows, each file named once;
- every such file is a regular file directly in the folder: symbolic links are refused, even
  ones that point inside (export never writes them, and a link checked now can be re-pointed
  before onnxruntime opens it), and so are FIFOs, devices and folders;
- `manifest.json` is itself a regular file of at most `MAX_MANIFEST_BYTES`;
- numbers are in sane ranges, so no dimension can make the runtime allocate without bound;
- a shared tensor's shape matches its file's size.

Files are opened with `O_NOFOLLOW` where the platform has it, and their type checked on the open
descriptor. The checksums in the manifest detect corruption in transit, not a malicious sender:
whoever writes a file can write its checksum too. Pin an artifact by its manifest's sha256
(`expect_sha256`) to trust one known artifact.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from edgeqa.errors import ArtifactError
from edgeqa.prompt import MAX_BEAMS, MAX_NO_ANSWER_CHARS, MAX_TOKENS, is_context_template, is_no_answer, is_template

if TYPE_CHECKING:
    from edgeqa.manifest import FileEntry, Manifest

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1_000_000
#: A plain file name: what `edgeqa export` writes, and nothing that could leave the folder.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
GRAPH_ROLES = ("encoder", "decoder")
SHARED_ROLES = ("embedding",)
#: Every role the format has; one file each, so an artifact has at most this many files.
KNOWN_ROLES = (*GRAPH_ROLES, "encoder_weights", "decoder_weights", *SHARED_ROLES, "tokenizer", "config",
               "generation_config")  # fmt: skip
#: dtypes a shared tensor may have (numpy names) and their sizes in bytes.
SHARED_DTYPES = {"float32": 4, "float16": 2, "uint8": 1, "int8": 1}
#: Upper bounds far above any FLAN-T5 (xxl: 24 layers, 64 heads, d_kv 64, d_model 4096, mT5's 250k vocab).
DIM_LIMITS = {"num_layers": 256, "num_decoder_layers": 256, "num_heads": 1024, "d_kv": 4096, "d_model": 65_536,
              "vocab_size": 1 << 21}  # fmt: skip
MAX_FILE_BYTES = 1 << 40
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open; it is refused just after
ADVICE = "re-export the artifact, or get an intact copy from its sender"


def shown(value: object, limit: int = 60) -> str:
    """An untrusted value for a one-line message: ASCII, escaped, shortened."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse(where: str, problem: str) -> ArtifactError:
    return ArtifactError(f"manifest.json: {where} {problem}; {ADVICE}")


def check_file_name(where: str, name: object) -> str:
    """`name` if it is a plain file name inside the folder, else `ArtifactError` naming `where`."""
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
        raise _refuse(
            where,
            f"is {shown(name)}, not a plain file name in the artifact folder (letters, digits, '.', '_', '-'; "
            "no '/', '\\', '..', absolute paths or hidden files)",
        )
    if name == MANIFEST:
        raise _refuse(where, f"names {MANIFEST} itself")
    return name


def _int(where: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _refuse(where, f"is {shown(value)}, not an integer from {low} to {high}")
    return value


def check_manifest(manifest: Manifest) -> None:
    """Check the manifest's names and numbers before any file is opened.

    Raises:
        ArtifactError: naming the first entry out of bounds.
    """
    if not isinstance(manifest.files, dict):
        raise _refuse("files", "is not an object")
    unknown = sorted(shown(role) for role in manifest.files if role not in KNOWN_ROLES)
    if unknown:
        raise _refuse("files", f"has unknown role(s) {', '.join(unknown[:3])} (known: {', '.join(KNOWN_ROLES)})")
    seen: dict[str, str] = {}
    for role, entry in manifest.files.items():
        name = check_file_name(f"files.{role}.path", entry.path)
        if name in seen:
            raise _refuse(f"files.{role}.path", f"names {name}, which files.{seen[name]} names too")
        seen[name] = role
        _int(f"files.{role}.size", entry.size, 0, MAX_FILE_BYTES)
        if not isinstance(entry.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
            raise _refuse(f"files.{role}.sha256", f"is {shown(entry.sha256)}, not 64 lowercase hex digits")
    for name, high in DIM_LIMITS.items():
        _int(f"dims.{name}", getattr(manifest.dims, name), 1, high)
    vocab = manifest.dims.vocab_size
    for name in ("pad", "eos", "decoder_start"):
        _int(f"special_tokens.{name}", getattr(manifest.special_tokens, name), 0, DIM_LIMITS["vocab_size"] - 1)
        if getattr(manifest.special_tokens, name) >= vocab:
            raise _refuse(f"special_tokens.{name}", f"is outside the model's {vocab} outputs (dims.vocab_size)")
    _int("tokenizer_vocab_size", manifest.tokenizer_vocab_size, 0, DIM_LIMITS["vocab_size"])
    if manifest.tokenizer_vocab_size > vocab:
        raise _refuse(
            "tokenizer_vocab_size",
            f"is {manifest.tokenizer_vocab_size}, more than the model's {vocab} outputs (dims.vocab_size)",
        )
    _int("max_input_tokens", manifest.max_input_tokens, 1, MAX_TOKENS)
    _int("max_answer_tokens", manifest.max_answer_tokens, 1, MAX_TOKENS)
    if not is_template(manifest.prompt_template):
        raise _refuse(
            "prompt_template", f"is {shown(manifest.prompt_template)}, not a text with one {{question}} field"
        )
    if not is_context_template(manifest.context_template):
        raise _refuse(
            "context_template",
            f"is {shown(manifest.context_template)}, not a text with one {{context}} and one {{question}} field",
        )
    if not is_no_answer(manifest.no_answer):
        raise _refuse(
            "no_answer", f"is {shown(manifest.no_answer)}, not a text of 1 to {MAX_NO_ANSWER_CHARS} characters"
        )
    _int("generation.max_new_tokens", manifest.generation.max_new_tokens, 1, MAX_TOKENS)
    _int("generation.num_beams", manifest.generation.num_beams, 1, MAX_BEAMS)
    _check_shared_tensors(manifest)


def _check_shared_tensors(manifest: Manifest) -> None:
    if not isinstance(manifest.shared_tensors, list):
        raise _refuse("shared_tensors", "is not a list")
    roles = [tensor.role for tensor in manifest.shared_tensors]
    for i, tensor in enumerate(manifest.shared_tensors):
        where = f"shared_tensors[{i}]"
        if tensor.role not in SHARED_ROLES or roles.count(tensor.role) > 1:
            raise _refuse(f"{where}.role", f"is {shown(tensor.role)}, not one of {', '.join(SHARED_ROLES)} once")
        entry = manifest.files.get(tensor.role)
        if entry is None:
            raise _refuse(f"{where}.role", f"is {tensor.role}, which files does not list")
        if not isinstance(tensor.dtype, str) or tensor.dtype not in SHARED_DTYPES:
            raise _refuse(f"{where}.dtype", f"is {shown(tensor.dtype)}, not one of {', '.join(SHARED_DTYPES)}")
        shape = tensor.shape
        if not isinstance(shape, list) or not 1 <= len(shape) <= 4:
            raise _refuse(f"{where}.shape", f"is {shown(shape)}, not a list of 1 to 4 sizes")
        elements = 1
        for size in shape:
            elements *= _int(f"{where}.shape", size, 1, 1 << 32)
        if not isinstance(tensor.names, dict) or not tensor.names or set(tensor.names) - set(GRAPH_ROLES):
            raise _refuse(f"{where}.names", f"is {shown(tensor.names)}, not initializer names by graph role")
        if not all(isinstance(name, str) and 0 < len(name) <= 1024 for name in tensor.names.values()):
            raise _refuse(f"{where}.names", "holds a name that is not a short string")
        if entry.size != elements * SHARED_DTYPES[tensor.dtype]:
            raise ArtifactError(
                f"{entry.path} holds {entry.size} bytes, not a {tensor.dtype} {shape} tensor; "
                "the artifact is inconsistent, re-export it"
            )


@contextmanager
def open_member(folder: Path, name: str, where: str) -> Iterator[io.BufferedReader]:
    """Open a file of the artifact (a name `check_file_name` passed) for reading: a regular file,
    never through a symbolic link.

    Raises:
        ArtifactError: the file is missing, a link, or not a regular file.
    """
    path = Path(folder) / name
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ArtifactError(f"artifact {folder} is missing {name} ({where}); {ADVICE}") from None
    except OSError as e:
        if path.is_symlink():
            raise ArtifactError(
                f"{name} ({where}) in {folder} is a symbolic link; an artifact holds plain files only, "
                f"so copy the file itself there (e.g. cp -L) or {ADVICE}"
            ) from None
        raise ArtifactError(f"cannot open {name} ({where}) in {folder}: {e.strerror}") from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (not _NOFOLLOW and path.is_symlink()):
        os.close(fd)
        raise ArtifactError(f"{name} ({where}) in {folder} is not a regular file; {ADVICE}")
    with os.fdopen(fd, "rb") as f:
        yield f


def read_member(folder: Path, name: str, where: str, limit: int) -> bytes:
    """The bytes of a file of the artifact, refused if it holds more than `limit` bytes."""
    with open_member(folder, name, where) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{name} ({where}) in {folder} is larger than {limit} bytes; {ADVICE}")
    return data


def read_manifest(folder: Path, expect_sha256: str | None = None) -> bytes:
    """The bytes of `folder/manifest.json`, bounded in size and, if given, matching a pinned sha256.

    Raises:
        ArtifactError: no such folder or file, a link, too large, or another manifest than the pinned one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is a file" if folder.exists() else "does not exist"
        raise ArtifactError(f"artifact folder {folder} {problem}; pass the folder `edgeqa export` wrote")
    if not (folder / MANIFEST).exists() and not (folder / MANIFEST).is_symlink():
        raise ArtifactError(f"{folder} has no {MANIFEST}: it is not an edgeqa artifact (run `edgeqa export`)")
    data = read_member(folder, MANIFEST, "the manifest", MAX_MANIFEST_BYTES)
    if expect_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expect_sha256.strip().lower():
            raise ArtifactError(
                f"{folder}/{MANIFEST} has sha256 {digest}, not the pinned {shown(expect_sha256, 70)}: "
                "this is another artifact than the one you pinned; do not deploy it"
            )
    return data


def extra_files(folder: Path, manifest: Manifest) -> list[str]:
    """Names in the folder that the manifest does not list (folders and links included)."""
    listed = {entry.path for entry in manifest.files.values()} | {MANIFEST}
    return sorted(shown(p.name) for p in Path(folder).iterdir() if p.name not in listed)


def check_file(folder: Path, role: str, entry: FileEntry, checksum: bool = True) -> None:
    """Check one listed file: a regular file in the folder with the manifest's size and, if asked, sha256.

    Raises:
        ArtifactError: naming the file and its role.
    """
    with open_member(folder, entry.path, f"files.{role}") as f:
        size = os.fstat(f.fileno()).st_size
        if size != entry.size:
            raise ArtifactError(
                f"{entry.path} in {folder} has {size} bytes, the manifest says {entry.size}: "
                "the file is truncated or replaced; re-export the artifact"
            )
        if checksum and hashlib.file_digest(f, "sha256").hexdigest() != entry.sha256:
            raise ArtifactError(
                f"{entry.path} in {folder} does not match its sha256 in the manifest: the file is corrupted; "
                "re-export or copy the artifact again"
            )
