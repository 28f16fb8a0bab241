"""Answers from an index: the top passages of a question, read in one batch, the surest reading kept.

The reader reads each of the question's top `k` passages (BM25) and answers from each. A reading's
score joins the two sources of evidence, as retrieve-then-read systems do (RAG, BERTserini): the
reader's score (the length-normalised log-probability of its answer) plus the passage's retrieval
log-probability (a softmax of the BM25 scores of the passages found). Retrieval decides between pages
it tells clearly apart; the reader decides where BM25 nearly ties, and passes over a passage by saying
it does not answer (the artifact's `no_answer`, FLAN's "unanswerable"); empty readings are passed over
too, and ties go to the better-ranked passage. `Choice.READER` keeps the reader's score alone. A
question that matches no passage gets `NO_PASSAGE`, one whose passages all fail to answer it
`NOT_ANSWERED`: never a guess. `edgeqa serve --index` builds the same rows with `reading_rows` and
chooses with `choose`, so a served answer is `DocumentsQA`'s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeqa.documents.query import Index, Passage
from edgeqa.documents.store import tokenizer_sha256
from edgeqa.errors import InputError
from edgeqa.prompt import NO_ANSWER

if TYPE_CHECKING:  # the runtime loads onnxruntime: only `DocumentsQA.open` needs it
    from edgeqa.runtime import Decoder, GenerationOptions, QAModel, Row

logger = logging.getLogger(__name__)

#: The answer to a question that shares no word with any passage of the index.
NO_PASSAGE = "No passage in the index matches this question."
#: The answer when the reader finds the answer in none of the passages it read.
NOT_ANSWERED = "The passages found do not answer this question."
#: Passages read for each question by default.
DEFAULT_K = 4


class Choice(StrEnum):
    """How the answer is chosen among the readings of a question's passages."""

    JOINT = "joint"  #: the reader's score plus the passage's retrieval log-probability (the default)
    READER = "reader"  #: the reader's score alone


@dataclass(frozen=True)
class Candidate:
    """One passage read for a question, and what the reader answered from it.

    Attributes:
        passage: The passage (its `rank` and BM25 `score` from the search).
        answer: The reader's answer from it ("" when it could not be read).
        score: The reader's score of that answer: its mean log-probability per token (higher is surer).
        retrieval: The passage's log-probability among the passages found for the question (a softmax
            of their BM25 scores); set by `choose`.
        error: Why the passage could not be read (too long with this question, say), else "".
        prompt_tokens: The question and passage in tokens (0 if not read).
        answer_tokens: The answer in tokens.
    """

    passage: Passage
    answer: str = ""
    score: float | None = None
    error: str = ""
    retrieval: float | None = None
    prompt_tokens: int = 0
    answer_tokens: int = 0

    @classmethod
    def read(cls, passage: Passage, row: Row | None, error: str = "") -> Candidate:
        """The candidate of a passage from its finished row (None: it could not be read, `error` says why)."""
        from edgeqa.runtime import FinishReason

        if row is None:
            return cls(passage, error=error)
        if row.finish_reason in (FinishReason.FAILED, FinishReason.CANCELLED):
            return cls(passage, error=f"reading it failed: {row.error or row.finish_reason}")
        return cls(passage, row.text, row.score, "", len(row.ids), len(row.tokens))

    @property
    def joint_score(self) -> float | None:
        """The reader's score plus the passage's retrieval log-probability (None until both are known)."""
        return None if self.score is None or self.retrieval is None else self.score + self.retrieval

    def to_dict(self) -> dict[str, Any]:
        data = {
            "answer": self.answer,
            "reader_score": _rounded(self.score),
            "retrieval_logprob": _rounded(self.retrieval),
            "joint_score": _rounded(self.joint_score),
            "source": self.passage.source,
            "rank": self.passage.rank,
            "bm25": round(self.passage.score, 4),
            "title": self.passage.title,
            "heading": self.passage.heading,
            "passage": self.passage.text,
        }
        return data | ({"error": self.error} if self.error else {})


@dataclass(frozen=True)
class DocumentAnswer:
    """The answer to a question from the index.

    Attributes:
        question: The question.
        text: The chosen answer, or `NO_PASSAGE`.
        source: The passage the answer was read from; None when no passage matched.
        candidates: Every passage read, best BM25 rank first, with the reader's answer and score.
    """

    question: str
    text: str
    source: Passage | None
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Whether an answer was read from a passage."""
        return self.source is not None

    @property
    def chosen(self) -> Candidate | None:
        """The candidate whose answer was kept."""
        return next((c for c in self.candidates if c.passage is self.source), None)

    def to_dict(self, candidates: bool = True) -> dict[str, Any]:
        chosen = self.chosen
        data = {
            "question": self.question,
            "answer": self.text,
            "found": self.found,
            "source": self.source.source if self.source else None,
            "reader_score": None if chosen is None else _rounded(chosen.score),
            "joint_score": None if chosen is None else _rounded(chosen.joint_score),
        }
        return data | ({"candidates": [c.to_dict() for c in self.candidates]} if candidates else {})


def reading_rows(
    decoder: Decoder, question: str, passages: Sequence[Passage], options: GenerationOptions, stop: tuple[str, ...] = ()
) -> tuple[list[Row | None], list[str]]:
    """A scored decoder row for each passage the question can be read with, and why the others cannot.

    Returns:
        One row per passage (None where it cannot be read) and one error message per passage ("" if none).

    Raises:
        InputError: the question itself is unusable (not a string, empty).
    """
    from edgeqa.runtime import Row

    decoder.prompts([question])  # the question's own faults are the caller's error, not a passage's
    rows: list[Row | None] = []
    errors: list[str] = []
    for passage in passages:
        try:
            [(ids, _)] = decoder.prompts([question], [passage.text])
        except InputError as e:
            rows.append(None)
            errors.append(str(e))
            continue
        rows.append(Row(ids, options, stop=stop, scored=True))
        errors.append("")
    return rows, errors


def choose(
    question: str, candidates: Sequence[Candidate], no_answer: str = NO_ANSWER, by: Choice = Choice.JOINT
) -> DocumentAnswer:
    """The answer with the best score `by` the rule given (ties: the better-ranked passage), passing over
    readings that say the passage does not answer (`no_answer`) or are empty; `NO_PASSAGE` without
    candidates, `NOT_ANSWERED` when no reading answers. The candidates returned carry their `retrieval`.

    Raises:
        InputError: no passage could be read with the question (the first one's error says why).
    """
    if not candidates:
        return DocumentAnswer(question, NO_PASSAGE, None, [])
    logprobs = retrieval_logprobs([c.passage.score for c in candidates])
    candidates = [replace(c, retrieval=logprob) for c, logprob in zip(candidates, logprobs, strict=True)]
    readable = [c for c in candidates if c.score is not None and not c.error]
    if not readable:
        raise InputError(f"none of the {len(candidates)} passages found could be read: {candidates[0].error}")
    answering = [c for c in readable if c.answer.strip() and c.answer.strip().lower() != no_answer.strip().lower()]
    if not answering:
        return DocumentAnswer(question, NOT_ANSWERED, None, candidates)
    best = max(answering, key=lambda c: (c.joint_score if by is Choice.JOINT else c.score, -c.passage.rank))
    return DocumentAnswer(question, best.answer, best.passage, candidates)


def retrieval_logprobs(bm25: Sequence[float]) -> list[float]:
    """Each passage's log-probability among those found: a log-softmax of their BM25 scores."""
    top = max(bm25)
    log_total = top + math.log(sum(math.exp(score - top) for score in bm25))
    return [score - log_total for score in bm25]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4) + 0.0  # + 0.0: never "-0.0"


def read_all(
    planned: Sequence[tuple[str, Sequence[Passage], Sequence[Row | None], Sequence[str]]], no_answer: str = NO_ANSWER
) -> list[DocumentAnswer]:
    """Each question's answer once its rows have finished: `(question, passages, rows, errors)` per question."""
    return [
        choose(
            question,
            [Candidate.read(p, row, error) for p, row, error in zip(passages, rows, errors, strict=True)],
            no_answer,
        )
        for question, passages, rows, errors in planned
    ]


class DocumentsQA:
    """Questions answered from an index of documents by a reader artifact (see the module's docstring).

    Args:
        model: The reader.
        index: The index of passages.
        k: Passages read per question.
    """

    def __init__(self, model: QAModel, index: Index, k: int = DEFAULT_K):
        self.model, self.index, self.k = model, index, check_k(k)
        warn_if_sized_for_another(index, model.folder / model.manifest.files["tokenizer"].path, model.folder)

    @classmethod
    def open(cls, artifact: str | Path, index: str | Path, k: int = DEFAULT_K, **load: Any) -> DocumentsQA:
        """Load the reader artifact (`QAModel.load`'s keyword arguments in `load`) and open the index.

        Raises:
            ArtifactError: the artifact is not a complete, intact artifact.
            DataError: the index is missing, damaged or of another format.
        """
        from edgeqa.runtime import QAModel

        check_k(k)
        return cls(QAModel.load(artifact, **load), Index.open(index), k)

    def ask(self, question: str, options: GenerationOptions | None = None, k: int | None = None) -> DocumentAnswer:
        """Answer one question from the index's top `k` passages (default: this object's `k`)."""
        return self.ask_batch([question], options, k)[0]

    def ask_batch(
        self,
        questions: Sequence[str],
        options: GenerationOptions | None = None,
        k: int | None = None,
        batch_size: int = 8,
    ) -> list[DocumentAnswer]:
        """Answer questions `batch_size` at a time, every passage of a batch's questions read together.

        Raises:
            InputError: an empty question, a bad option, or a question none of whose passages can be read.
            DataError: the index cannot be read.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        k = check_k(self.k if k is None else k)
        opts = self.model.options(options)
        answers: list[DocumentAnswer] = []
        for first in range(0, len(questions), batch_size):
            answers += self._read(list(questions[first : first + batch_size]), opts, k)
        return answers

    def _read(self, questions: list[str], options: GenerationOptions, k: int) -> list[DocumentAnswer]:
        decoder = self.model.decoder()
        planned = []
        for question in questions:
            passages = self.index.search(question, k)
            planned.append((question, passages, *reading_rows(decoder, question, passages, options)))
        decoder.join([row for _, _, rows, _ in planned for row in rows if row is not None])
        decoder.run()
        return read_all(planned, self.model.manifest.no_answer)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> DocumentsQA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def warn_if_sized_for_another(index: Index, reader_tokenizer: Path, artifact: Path) -> bool:
    """Warn (and say so) when the index's passages were measured with another tokenizer than the reader's."""
    if index.info.tokenizer_sha256 == tokenizer_sha256(reader_tokenizer):
        return False
    logger.warning(
        "%s was sized with the tokenizer of %s, not this reader's: a passage that does not fit the reader's "
        "input is skipped; `edgeqa index ... --artifact %s` sizes passages for it",
        index.path,
        index.info.tokenizer_name,
        artifact,
    )
    return True


def check_k(k: int) -> int:
    """`k` if it is a number of passages one search may return, else an `InputError` naming the range."""
    from edgeqa.documents.query import MAX_K

    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InputError(f"k is {k!r}; read 1 to {MAX_K} passages per question")
    return k
