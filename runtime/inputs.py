"""Checks of what callers hand the runtime and the documents reader: each rule once, each refusal an
`InputError` (or the error given) that names the argument. Standard library only (`Row` uses them)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

from edgeqa.errors import ConfigError, InputError
from edgeqa.typed_json import whole_number

#: The most threads a graph takes: more is a typo, and onnxruntime fails to create them in its own words.
MAX_THREADS = 1024


def check_question(question: object) -> str:
    """`question` if it is a string, else an `InputError` naming its type."""
    if not isinstance(question, str):
        raise InputError(f"a question must be a string, got {type(question).__name__}")
    return question


def check_batch(items: object, call: str, what: str, hint: str) -> list[Any]:
    """`items` as a list when it is a collection of them, else an `InputError`: `call` takes a list of
    `what`, `hint` says what to do instead."""
    if not _is_list(items):
        raise InputError(f"{call} takes a list of {what}, got {type(items).__name__}; {hint}")
    return list(items)


def token_ids(ids: object) -> list[int]:
    """Prompt token ids as a list of ints (numpy integers too); floats, bools, strings are refused."""
    if not _is_list(ids):
        raise InputError(f"prompt token ids must be lists of integers, got {type(ids).__name__}")
    values = list(ids)
    wrong = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if wrong:
        raise InputError(f"prompt token ids must be lists of integers, got {type(wrong[0]).__name__} {wrong[0]!r}")
    return [int(v) for v in values]


def stop_strings(stop: object) -> tuple[str, ...]:
    """Stop strings as a tuple, from any collection of strings (OpenAI's list included)."""
    if not _is_list(stop):
        raise InputError(f"stop must be a list of strings, got {type(stop).__name__}; give even one as a list: ['\\n']")
    stops = tuple(stop)
    wrong = [s for s in stops if not isinstance(s, str)]
    if wrong:
        raise InputError(f"stop must be a list of strings, got {type(wrong[0]).__name__} {wrong[0]!r} in it")
    return stops


def check_threads(threads: object) -> int:
    """`threads` if it is a thread count a graph can run on (1 to `MAX_THREADS`), else a `ConfigError`."""
    return whole_number(threads, "threads", 1, MAX_THREADS, ConfigError)


def _is_list(value: object) -> TypeGuard[Iterable[Any]]:
    """Whether `value` is a collection of items: not one string (whose characters would be taken for them)."""
    return isinstance(value, Iterable) and not isinstance(value, str | bytes | bytearray | Mapping)
