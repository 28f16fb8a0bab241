"""`edgeqa ask --index`: questions answered from an index, with their sources; a file of them, one, or a person's.

The console and the question files are `edgeqa ask`'s own (`edgeqa.runtime.questions`); only what is
answered, and how it is shown, differs.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeqa.documents.answers import DocumentAnswer
from edgeqa.documents.reader import DocumentsQA
from edgeqa.errors import InputError
from edgeqa.runtime.options import GenerationOptions
from edgeqa.runtime.questions import NO_QUESTION, Ask, Console, answer_file, converse


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
        _ask_person(qa, options, console, request.as_json)
    else:
        raise InputError(NO_QUESTION)


def _show(answer: DocumentAnswer, as_json: bool, console: Console) -> None:
    if as_json:
        console.write(json.dumps(answer.to_dict(), ensure_ascii=False) + "\n")
        return
    console.write(answer.text + "\n")
    if answer.source is not None:
        console.write(f"source: {answer.source.source}\n")


def _ask_person(qa: DocumentsQA, options: GenerationOptions, console: Console, as_json: bool) -> None:
    converse(
        console,
        f"Ask about the documents in {qa.index.path} (Ctrl-D to quit).",
        lambda question: _show(qa.ask(question, options), as_json, console),
    )


def _ask_file(qa: DocumentsQA, file: Path, request: Ask, options: GenerationOptions, console: Console) -> None:
    answer_file(
        file,
        request,
        console,
        lambda texts: [answer.to_dict() for answer in qa.ask_batch(texts, options, request.batch_size)],
        lambda text: qa.ask(text, options).to_dict(),
        lambda rows: f", {sum(row['found'] for row in rows)} from a passage",
    )
