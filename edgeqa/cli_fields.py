"""Command-line options derived from a config dataclass: one flag per field, its help from the
field's line in the `Attributes:` docstring, so flags, help and defaults have one source."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE = re.compile(r"^    (\w+): (.*)$")
#: The command's parameter that receives the fields given on the command line.
FIELDS_PARAMETER = "fields"


def user_path(value: str | Path) -> Path:
    """A path as the user typed it, `~` meaning their home folder also where the shell leaves it as it is
    (`--output=~/qa`, quotes): no folder named `~` is ever created."""
    return Path(value).expanduser()


#: What every path parameter of the CLI takes (`typer.Option(..., **PATH)`): `user_path`, shown as PATH.
PATH: dict[str, Any] = {"parser": user_path}


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description from the class's Google-style `Attributes:` section."""
    doc = inspect.getdoc(cls) or ""
    docs: dict[str, str] = {}
    current = None
    for line in doc.partition("Attributes:")[2].splitlines():
        match = _ATTRIBUTE.match(line)
        if match:
            current = match[1]
            docs[current] = match[2].strip()
        elif current and line.startswith("        "):
            docs[current] += " " + line.strip()
    return docs


def fields_as_options(
    cls: type,
    skip: tuple[str, ...] = (),
    flags: dict[str, tuple[str, ...]] | None = None,
    show_defaults: bool = True,
) -> Callable[[F], F]:
    """Decorate a command so that it also takes one option per field of the dataclass `cls`.

    The command declares `fields: dict[str, Any]` and receives the fields given on the command
    line there (those not given are absent), to apply with `dataclasses.replace` or a
    constructor. An enum field takes its values as choices (and receives the member); a
    `tuple[str, ...]` field takes a comma-separated list.

    Args:
        cls: The config dataclass.
        skip: Fields the command takes otherwise (e.g. as arguments).
        flags: Option names per field instead of `--field-name`.
        show_defaults: Append each field's default to its help.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    chosen = [f for f in dataclasses.fields(cls) if f.name not in skip]
    parameters = [
        _parameter(f, hints[f.name], docs.get(f.name, ""), (flags or {}).get(f.name), show_defaults) for f in chosen
    ]
    converters = {f.name: _converter(hints[f.name]) for f in chosen}

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != FIELDS_PARAMETER]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in converters}
            values = {name: converters[name](value) for name, value in given.items() if value is not None}
            return command(*args, **kwargs, **{FIELDS_PARAMETER: values})

        wrapper.__signature__ = signature.replace(parameters=own + parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + parameters}
        return wrapper  # type: ignore[return-value]

    return decorate


def _base(kind: Any) -> Any:
    """`X` of `X | None`."""
    args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    return args[0] if typing.get_origin(kind) in (typing.Union, type(int | None)) and len(args) == 1 else kind


def _parameter(
    f: dataclasses.Field, kind: Any, doc: str, names: tuple[str, ...] | None, show_default: bool
) -> inspect.Parameter:
    base: Any = _base(kind)
    if typing.get_origin(base) is tuple:
        base = str
    default = f.default if f.default is not dataclasses.MISSING else None
    if show_default and default not in (None, (), ""):
        doc += f"  [default: {default}]"  # as click shows the defaults of the other options
    flag = f.name.replace("_", "-")
    names = names or ((f"--{flag}/--no-{flag}",) if base is bool else (f"--{flag}",))
    option = typer.Option(*names, help=doc, show_default=False)
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[base | None, option]
    )


def _converter(kind: Any) -> Callable[[Any], Any]:
    if typing.get_origin(_base(kind)) is tuple:
        return lambda value: tuple(part.strip() for part in str(value).split(",") if part.strip())
    if _base(kind) is Path:
        return user_path
    return lambda value: value
