"""Asking an artifact questions: one, a file of them, or a person's at a terminal (`edgeqa ask`).

`ask` decides which and does it; a `Console` (the CLI's terminal, or a test's) shows the result.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TextIO

from edgeqa.atomic import unwritable, write_atomic
from edgeqa.errors import EdgeQAError, InputError
from edgeqa.records import source_lines
from edgeqa.runtime.inputs import whole_number
from edgeqa.runtime.model import QAModel
from edgeqa.runtime.options import GenerationOptions

#: One answered question as a JSON row of `ask --file`'s output.
Reply = dict[str, Any]


@dataclass(frozen=True)
class Question:
    line: int
    text: str


@dataclass(frozen=True)
class Ask:
    """What to answer, and how to show it.

    Attributes:
        question: One question; None to answer `file`, or else a person at the console.
        file: Questions: .jsonl (`{"question": ...}` a line) or .txt (one a line).
        output: Where `file`'s answers go, as JSONL written atomically (None: the console).
        stream: Show one question's answer as it is generated.
        as_json: Show one question's answer as a JSON object with its figures.
        batch_size: Questions of `file` answered together.
        context: A passage every question is read from (None: asked alone).
    """

    question: str | None = None
    file: Path | None = None
    output: Path | None = None
    stream: bool = False
    as_json: bool = False
    batch_size: int = 8
    context: str | None = None

    def __post_init__(self) -> None:
        whole_number(self.batch_size, "batch_size", 1)
        if self.output is not None and self.file is None:
            raise InputError("--output writes the answers of --file; give --file too, or leave --output out")
        if self.file is not None and self.question is not None:
            raise InputError("give one question or --file, not both (the question would be left unanswered)")
        if self.stream and (self.file is not None or self.as_json):
            raise InputError("--stream prints one answer as it is generated; leave it out with --file or --json")
        problem = unwritable(self.output) if self.output is not None else None
        if problem:  # before any question is answered
            raise InputError(f"cannot write the answers to {self.output}: {problem}; give another --output")


class Console(Protocol):
    """Where `ask` shows what it does: answers through `write`, everything else through `note`."""

    #: Whether a person can type questions (standard input is a terminal).
    interactive: bool

    def write(self, text: str) -> None:
        """Answer text, as is (no newline added)."""

    def note(self, text: str) -> None:
        """A line for the person: a prompt, a warning, a summary."""

    def read(self, prompt: str) -> str:
        """The person's next question; EOFError or KeyboardInterrupt when they are done."""
        ...

    def progress(self, total: int) -> AbstractContextManager[Callable[[int], None]]:
        """A progress display over `total` questions; calling what it gives advances it by that many."""
        ...


NO_QUESTION = (
    "no question given: pass one as an argument, use --file (--file - reads standard input), or run in a terminal"
)


def ask(model: QAModel, request: Ask, options: GenerationOptions, console: Console) -> None:
    """Answer `request.file`, else `request.question`, else the person at an interactive console.

    Raises:
        InputError: nothing to answer (no question, no file, no terminal), or an unusable question or file.
    """
    if request.file is not None:
        _ask_file(model, request.file, request, options, console)
    elif request.question is not None:
        _ask_one(model, request, options, console)
    elif console.interactive:
        _ask_person(model, options, console, request)
    else:
        raise InputError(NO_QUESTION)


def _ask_one(model: QAModel, request: Ask, options: GenerationOptions, console: Console) -> None:
    question = request.question or ""
    if request.stream and not request.as_json:
        for piece in model.stream(question, options, request.context):
            console.write(piece)
        console.write("\n")
        return
    result = model.answer(question, options, request.context)
    if request.as_json:
        console.write(json.dumps({"question": question, **result.to_dict()}, ensure_ascii=False) + "\n")
    else:
        console.write(result.text + "\n")


def _ask_person(model: QAModel, options: GenerationOptions, console: Console, request: Ask) -> None:
    """Answer each question typed until end of input: streamed, or as a JSON object with `as_json`."""

    def answer(question: str) -> None:
        _ask_one(model, replace(request, question=question, stream=not request.as_json), options, console)

    greeting = "Ask a question" if request.context is None else "Ask about the passage"
    converse(console, f"{greeting} (Ctrl-D to quit).", answer)


def converse(console: Console, greeting: str, answer: Callable[[str], None]) -> None:
    """Answer each question a person types until end of input (Ctrl-D) or Ctrl-C at the prompt; a bad
    question only costs itself (its error is shown, the next one is asked), and Ctrl-C while an answer is
    generated only that answer."""
    console.note(greeting)
    while True:
        try:
            question = console.read("? ")
        except (EOFError, KeyboardInterrupt):
            console.note("")
            return
        if not question.strip():
            continue
        try:
            answer(question)
        except EdgeQAError as e:
            console.note(f"error: {e}")
        except KeyboardInterrupt:
            console.write("\n")
            console.note("(stopped)")


def _ask_file(model: QAModel, file: Path, request: Ask, options: GenerationOptions, console: Console) -> None:
    def answer_batch(texts: list[str]) -> list[Reply]:
        answers = model.answer_batch(texts, options, request.batch_size, contexts=[request.context] * len(texts))
        return [{"question": text, **answer.to_dict()} for text, answer in zip(texts, answers, strict=True)]

    def answer_one(text: str) -> Reply:
        return {"question": text, **model.answer(text, options, request.context).to_dict()}

    answer_file(file, request, console, answer_batch, answer_one)


def answer_file(
    file: Path,
    request: Ask,
    console: Console,
    answer_batch: Callable[[list[str]], list[Reply]],
    answer_one: Callable[[str], Reply],
    tally: Callable[[list[Reply]], str] = lambda rows: "",
) -> None:
    """Answer the questions of `file` (`answer_questions`) and show them as JSONL, on the console or
    written atomically to `request.output`; bad lines and skipped questions as warnings, then a summary
    (`tally` adds to it)."""
    questions, problems = read_questions(file)
    with console.progress(len(questions)) as advance:
        rows, skipped = answer_questions(questions, request.batch_size, answer_batch, answer_one, advance)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if request.output is None:
        console.write(text)
    else:
        try:
            write_atomic(request.output, text)
        except OSError as e:  # disk full, or the folder changed while answering
            raise InputError(f"cannot write the answers to {request.output}: {e.strerror or e}") from e
    for problem in problems + skipped:
        console.note(f"warning: {file}: {problem}")
    where = f" -> {request.output}" if request.output else ""
    console.note(f"answered {len(rows)} of {len(questions) + len(problems)} questions{tally(rows)}{where}")


def read_context(source: str, stdin: TextIO | None = None) -> str:
    """The passage `edgeqa ask --context` reads: a UTF-8 text file, or standard input for "-".

    Raises:
        InputError: the file is missing or unreadable, or the passage is empty.
    """
    if source == "-":
        stream = stdin or sys.stdin
        if stream.isatty():
            print("Type or paste the passage, then Ctrl-D on a line of its own.", file=sys.stderr)
        text = stream.read()
        where = "standard input"
    else:
        path = Path(source).expanduser()
        text, where = _read_text(path, "context file", "give a text file, or - to read standard input"), str(path)
    if not text.strip():
        raise InputError(f"the context from {where} is empty; give the passage to read")
    return text


def read_questions(path: Path, stdin: TextIO | None = None) -> tuple[list[Question], list[str]]:
    """Questions from a .jsonl file (`{"question": ...}` per line), a .txt file (one per line), or standard
    input for "-" (one per line).

    Returns:
        The questions, and one message per bad line (which is skipped, never dropped silently).
    """
    path = Path(path)
    where, jsonl = f"question file {path}", path.suffix.lower() == ".jsonl"
    if str(path) == "-":  # standard input: one question a line, as a .txt file
        where, content = "standard input", (stdin or sys.stdin).read()
    else:
        if path.is_file() and path.suffix.lower() not in (".jsonl", ".txt"):
            raise InputError(f'{path} must be .jsonl (one {{"question": ...}} per line) or .txt (one per line)')
        content = _read_text(path, "question file", "give a .jsonl or .txt file, or - for standard input")
    lines = source_lines(content)
    questions, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        text: Any = line
        if jsonl:
            try:
                text = json.loads(line).get("question")
            except (json.JSONDecodeError, AttributeError, RecursionError):  # RecursionError: [[[[... nested
                problems.append(f'line {number}: not a JSON object with a "question" field; skipped')
                continue
        if not isinstance(text, str) or not text.strip():
            problems.append(f"line {number}: no question text; skipped")
            continue
        questions.append(Question(number, text))
    if not questions:
        bad = f": {len(problems)} bad lines, the first: {problems[0]}" if problems else ""
        raise InputError(f"{where} holds no questions{bad}")
    return questions, problems


def _read_text(path: Path, what: str, advice: str) -> str:
    """The UTF-8 text of the file at `path`, else an `InputError` naming it as `what` with `advice`."""
    if not path.is_file():
        kind = "is not a regular file (a pipe or a device)" if path.exists() else "does not exist"
        raise InputError(f"{what} {path} {'is a folder' if path.is_dir() else kind}; {advice}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the {what} {path}: {e}; give a UTF-8 text file") from e


def answer_questions(
    questions: list[Question],
    batch_size: int,
    answer_batch: Callable[[list[str]], list[Reply]],
    answer_one: Callable[[str], Reply],
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Reply], list[str]]:
    """Answer questions `batch_size` at a time; where a batch is refused (`InputError`), one at a time,
    so that a question refused alone is skipped and reported, never its batch-mates.

    Returns:
        One JSON row per answered question (its line, then what the answer gives), and one message per
        skipped question.
    """
    rows, problems = [], []
    for first in range(0, len(questions), batch_size):
        batch = questions[first : first + batch_size]
        replies: list[Reply | None]
        try:
            replies = list(answer_batch([q.text for q in batch]))
        except InputError:
            replies = []
            for q in batch:
                try:
                    replies.append(answer_one(q.text))
                except InputError as single:
                    problems.append(f"line {q.line}: {single}; skipped")
                    replies.append(None)
        rows += [{"line": q.line, **reply} for q, reply in zip(batch, replies, strict=True) if reply is not None]
        if progress:
            progress(len(batch))
    return rows, problems
