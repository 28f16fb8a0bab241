"""JSON records read into frozen dataclasses, every value checked against its field's type (stdlib only).

The manifest and the checkpoint's training record are read through here, so a wrong key or
type in a file someone else wrote is a one-line `EdgeQAError` naming the key, never a
`KeyError` or `TypeError` later.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import numbers
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from edgeqa.errors import EdgeQAError, InputError

R = TypeVar("R")
E = TypeVar("E", bound=enum.Enum)


class _Mismatch(Exception):
    """A value that does not fit its field; `read_record` turns it into the caller's error."""


def read_record(cls: type[R], data: object, where: str, error: type[EdgeQAError], advice: str) -> R:
    """Build the dataclass `cls` from JSON data, checking every value against its field's type.

    Args:
        cls: A dataclass whose fields are bool, int, float, str, Path, string enums, lists,
            `tuple[X, ...]`, str-keyed dicts, other such dataclasses, or `X | None` of those.
        data: The parsed JSON.
        where: How the message names the record (e.g. "manifest.json").
        error: The error class to raise.
        advice: What to do, appended to the message.

    Raises:
        error: a key is unknown or missing, or a value has the wrong type; names the key.
    """
    try:
        return _record(cls, data, where)
    except _Mismatch as e:
        raise error(f"{e}; {advice}") from None


def _record(cls: type[R], data: object, where: str) -> R:
    if not isinstance(data, dict):
        raise _Mismatch(f"{where} should be a JSON object, got {_shown(data)}")
    hints: dict[str, Any] = _field_types(cls)  # type: ignore[arg-type]
    unknown = sorted(str(key) for key in data if key not in hints)
    if unknown:
        raise _Mismatch(f"{where} has unknown key(s) {_shown(unknown)}")
    required = [f.name for f in dataclasses.fields(cls) if _required(f)]  # type: ignore[arg-type]
    missing = [name for name in required if name not in data]
    if missing:
        raise _Mismatch(f"{where} lacks {', '.join(missing)}")
    values = {name: _value(hints[name], value, f"{where}: {name}") for name, value in data.items()}
    return cls(**values)


@cache
def _field_types(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _value(kind: Any, value: object, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [arg for arg in args if arg is not type(None)]  # edgeqa's unions are `X | None` only
        return _value(kind, value, where)
    if dataclasses.is_dataclass(kind):
        return _record(kind, value, where)  # type: ignore[arg-type]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return _choice(kind, value, where)
    if origin is list and isinstance(value, list):
        return [_value(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is tuple and isinstance(value, list | tuple):  # tuple[X, ...]
        return tuple(_value(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict and isinstance(value, dict):
        return {key: _value(args[1], item, f"{where}.{_key(key)}") for key, item in value.items()}
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str) and isinstance(value, kind) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is Path and isinstance(value, str | Path):
        return Path(value)
    raise _Mismatch(f"{where} should be {getattr(kind, '__name__', str(kind))}, got {_shown(value)}")


def parse_choice(kind: type[E], value: object, where: str, error: type[EdgeQAError]) -> E:
    """`value` as a member of the string enum `kind` (a member is itself).

    Raises:
        error: `value` is none of the enum's values; names `where`, the value and the valid ones.
    """
    try:
        return _choice(kind, value, where)
    except _Mismatch as e:
        raise error(str(e)) from None


def _choice(kind: type[E], value: object, where: str) -> E:
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    valid = ", ".join(str(member.value) for member in kind)
    raise _Mismatch(f"{where} {_shown(value)} is unknown; choose one of {valid}")


def _key(key: str) -> str:
    """A key from the file, as a message names it: as is if short printable ASCII, else quoted and escaped."""
    return key if key.isascii() and key.isprintable() and 0 < len(key) <= 40 else _shown(key)


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def check_types(record: object, error: type[EdgeQAError]) -> None:
    """Check a dataclass instance's values against its field types, in place (ints become floats
    where a float is declared), for records built from user input (TOML, JSON requests).

    Raises:
        error: naming the first field whose value has the wrong type.
    """
    hints: dict[str, Any] = _field_types(type(record))  # type: ignore[arg-type]
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        try:
            value = _value(hints[f.name], getattr(record, f.name), f.name)
        except _Mismatch as e:
            raise error(str(e)) from None
        object.__setattr__(record, f.name, value)


def whole_number(
    value: object, name: str, low: int, high: int | None = None, error: type[EdgeQAError] = InputError
) -> int:
    """`value` as an int if it is a whole number (not a bool) from `low` to `high`, else `error` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be a whole number, got {type(value).__name__} {value!r}")
    number = int(value)
    if number < low:
        raise error(f"{name} must be at least {low}, got {number}")
    if high is not None and number > high:
        raise error(f"{name} must be at most {high}, got {number}")
    return number
