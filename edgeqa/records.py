"""Question/answer records from JSONL, JSON or CSV files, and the bundled sample data (stdlib only)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edgeqa.errors import DataError

ASSETS = Path(str(resources.files("edgeqa") / "assets"))
BUNDLED_TOKENIZER = ASSETS / "flan-t5-tokenizer"
BUNDLED_QA = ASSETS / "qa"


def sample_data(split: str = "validation") -> Path:
    """Path of a split (train / validation / test) of the bundled open QA sample."""
    return BUNDLED_QA / f"{split}.jsonl"


@dataclass(frozen=True)
class QARecord:
    """A question, its reference answer and the passage it is read from (None: asked alone)."""

    question: str
    answer: str
    context: str | None = None


def read_records(
    path: Path, question_key: str = "question", answer_key: str = "answer", context_key: str = "context"
) -> list[QARecord]:
    """Read (question, answer) pairs, each with its passage where a record has a non-empty `context_key`;
    every record must have a question and an answer.

    Raises:
        DataError: the file is missing, unreadable, empty, or a record lacks a field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    rows = _rows(path)
    if not rows:
        raise DataError(f"data file {path} holds no records")
    records = []
    for number, row in enumerate(rows, start=1):
        question, answer = _text(row.get(question_key)), _text(row.get(answer_key))
        if question is None or answer is None:
            missing = " or ".join(key for key, text in ((question_key, question), (answer_key, answer)) if text is None)
            available = ", ".join(sorted(row)) or "none"
            raise DataError(f"record {number} of {path} has no {missing}; fields available: {available}")
        context = row.get(context_key)
        context = context.strip() if isinstance(context, str) and context.strip() else None
        records.append(QARecord(question, answer, context))
    return records


def _text(value: object) -> str | None:
    """A field's text: a string, or a number (0 too) as training reads one; None for anything else or blank."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value).strip() or None


def source_lines(text: str) -> list[str]:
    """The lines of `text` as editors and `grep -n` count them: broken at line feeds (and CR LF, CR) only,
    where `str.splitlines` also breaks at form feeds, U+2028 and the like, which JSON strings may hold
    unescaped (and which would shift every citation of a document)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _rows(path: Path) -> list[dict]:
    """The file's records as dicts; anything that is not one record a line, a row or a list item is refused."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
            extra = next((number for number, row in enumerate(rows, start=1) if None in row), None)
            if extra is not None:
                raise DataError(f"record {extra} of {path} has more fields than the header names; quote commas")
            return rows
        if suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            if not isinstance(data, list):
                raise DataError(f"{path} holds a JSON {type(data).__name__}; give a list of records (objects)")
            return [_record(row, f"record {number} of {path}") for number, row in enumerate(data, start=1)]
        if suffix == ".jsonl":
            rows = []
            for number, line in enumerate(source_lines(text), start=1):
                if line.strip():
                    try:
                        rows.append(_record(json.loads(line), f"line {number} of {path}"))
                    except json.JSONDecodeError as e:
                        raise DataError(f"line {number} of {path} is not valid JSON: {e.msg}") from e
            return rows
    except RecursionError as e:
        raise DataError(f"cannot read {path}: a record is nested too deeply; give flat records") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    raise DataError(f"{path} has an unsupported type {suffix or '(none)'}; use .jsonl, .json or .csv")


def _record(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f'{where} is not a record: a JSON object such as {{"question": ..., "answer": ...}}')
    return value
