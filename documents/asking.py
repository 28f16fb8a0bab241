"""`edgeqa ask --index`: questions answered from an index, with their sources; a file of them, one, or a person's.

The console and the question files are `edgeqa ask`'s own (`edgeqa.runtime.questions`); only what is
answered, and how it is shown, differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeqa.atomic import write_atomic
from edgeqa.documents.reader import DocumentAnswer, DocumentsQA
from edgeqa.errors import InputError
from edgeqa.runtime.options import GenerationOptions
from edgeqa.runtime.questions import Ask, Console, Question, converse, read_questions


def ask_index(qa: DocumentsQA, request: Ask, options: GenerationOptions, console: Console) -> None:
    """Answer `request.file`, else `request.question`, else the person at an interactive console, from the index.

    Raises:
        InputError: nothing to answer, an unusable question or file, or an option the index cannot take
            (streaming: the answer is chosen once every passage is read; a context: the index brings them).
    """
    if request.stream:
        raise InputError("--stream does not work with --index: the answer is chosen once every passage is read")
    if request.context is not None:
        raise InputError("give --context or --index, not both: the index finds the passages to read")
    if request.file is not None:
        _ask_file(qa, request.file, request, options, console)
    elif request.question is not None:
        _show(qa.ask(request.question, options), request.as_json, console)
    elif console.interactive:
        _ask_person(qa, options, console)
    else:
        raise InputError("no question given: pass one as an argument, use --file, or run in a terminal")


def _show(answer: DocumentAnswer, as_json: bool, console: Console) -> None:
    if as_json:
        console.write(json.dumps(answer.to_dict(), ensure_ascii=False) + "\n")
        return
    console.write(answer.text + "\n")
    if answer.source is not None:
        console.write(f"source: {answer.source.source}\n")


def _ask_person(qa: DocumentsQA, options: GenerationOptions, console: Console) -> None:
    converse(
        console,
        f"Ask about the documents in {qa.index.path} (Ctrl-D to quit).",
        lambda question: _show(qa.ask(question, options), False, console),
    )


def _ask_file(qa: DocumentsQA, file: Path, request: Ask, options: GenerationOptions, console: Console) -> None:
    questions, problems = read_questions(file)
    rows: list[dict[str, Any]] = []
    with console.progress(len(questions)) as advance:
        for first in range(0, len(questions), request.batch_size):
            batch = questions[first : first + request.batch_size]
            rows += _answer_rows(qa, batch, options, problems)
            advance(len(batch))
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if request.output is None:
        console.write(text)
    else:
        write_atomic(request.output, text)
    for problem in problems:
        console.note(f"warning: {file}: {problem}")
    found = sum(row["found"] for row in rows)
    where = f" -> {request.output}" if request.output else ""
    console.note(f"answered {len(rows)} of {len(questions) + len(problems)} questions, {found} from a passage{where}")


def _answer_rows(
    qa: DocumentsQA, batch: list[Question], options: GenerationOptions, problems: list[str]
) -> list[dict[str, Any]]:
    """One JSON row per question of the batch (read together); a question that fails alone is skipped and reported."""
    try:
        answers: list[DocumentAnswer | None] = list(qa.ask_batch([q.text for q in batch], options))
    except InputError:
        answers = []
        for q in batch:
            try:
                answers.append(qa.ask(q.text, options))
            except InputError as e:
                problems.append(f"line {q.line}: {e}; skipped")
                answers.append(None)
    return [
        {"line": q.line, **answer.to_dict()} for q, answer in zip(batch, answers, strict=True) if answer is not None
    ]
