"""Answering a file of questions: read, batch, and write JSONL atomically."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqa.errors import InputError
from edgeqa.runtime.model import Answer, QAModel
from edgeqa.runtime.options import GenerationOptions


@dataclass(frozen=True)
class Question:
    line: int
    text: str


def read_questions(path: Path) -> tuple[list[Question], list[str]]:
    """Questions from a .jsonl file (`{"question": ...}` per line) or a .txt file (one per line).

    Returns:
        The questions, and one message per bad line (which is skipped, never dropped silently).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"question file {path} does not exist")
    if path.suffix.lower() not in (".jsonl", ".txt"):
        raise InputError(f'{path} must be .jsonl (one {{"question": ...}} per line) or .txt (one per line)')
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from e
    questions, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        text: Any = line
        if path.suffix.lower() == ".jsonl":
            try:
                text = json.loads(line).get("question")
            except (json.JSONDecodeError, AttributeError):
                problems.append(f'line {number}: not a JSON object with a "question" field; skipped')
                continue
        if not isinstance(text, str) or not text.strip():
            problems.append(f"line {number}: no question text; skipped")
            continue
        questions.append(Question(number, text))
    return questions, problems


def answer_file(
    model: QAModel,
    path: Path,
    output: Path | None = None,
    batch_size: int = 8,
    options: GenerationOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, list[str]]:
    """Answer every question of a file; JSONL to `output` (written atomically) or stdout.

    Returns:
        How many questions were answered, and the problems reported for skipped lines.
    """
    options = model.options(options)
    questions, problems = read_questions(path)
    rows = []
    for first in range(0, len(questions), batch_size):
        batch = questions[first : first + batch_size]
        answers: list[Answer | None]
        try:
            answers = list(model.answer_batch([q.text for q in batch], options, batch_size=batch_size))
        except InputError:
            # Fall back to one at a time so that one bad question only skips itself.
            answers = []
            for q in batch:
                try:
                    answers.append(model.answer(q.text, options))
                except InputError as single:
                    problems.append(f"line {q.line}: {single}; skipped")
                    answers.append(None)
        for q, a in zip(batch, answers, strict=True):
            if a is not None:
                rows.append(json.dumps({"line": q.line, "question": q.text, **a.to_dict()}, ensure_ascii=False))
        if progress:
            progress(len(batch))
    text = "".join(row + "\n" for row in rows)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomic(Path(output), text)
    return len(rows), problems


def write_atomic(path: Path, text: str) -> None:
    """Write a file through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
