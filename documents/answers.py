"""What the reader read for a question, and which answer is kept.

Every passage found for a question is read; each reading is a `Candidate`. The answer kept is the
one with the best joint score, as retrieve-then-read systems join their two sources of evidence
(RAG's passage prior, BERTserini's interpolation): the reader's score (the length-normalised
log-probability of its answer) plus `retrieval_weight` times the passage's retrieval log-probability
(a log-softmax of the BM25 scores of the passages found). Readings that say the passage does not
answer (the artifact's `no_answer`, FLAN's "unanswerable") or are empty are passed over; ties go to
the better-ranked passage. A weight of 0 is the reader's score alone. A question that matches no
passage gets `NO_PASSAGE`, one whose passages all fail to answer it `NOT_ANSWERED`: never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgeqa.documents.query import Passage
from edgeqa.errors import InputError
from edgeqa.prompt import NO_ANSWER

if TYPE_CHECKING:  # the runtime loads onnxruntime
    from edgeqa.runtime import Row

#: The answer to a question that shares no word with any passage of the index.
NO_PASSAGE = "No passage in the index matches this question."
#: The answer when the reader finds the answer in none of the passages it read.
NOT_ANSWERED = "The passages found do not answer this question."
#: How much the passage's retrieval log-probability counts beside the reader's score by default.
RETRIEVAL_WEIGHT = 1.0
#: The largest `retrieval_weight` taken.
MAX_RETRIEVAL_WEIGHT = 100.0


@dataclass(frozen=True)
class Candidate:
    """One passage read for a question, and what the reader answered from it.

    Attributes:
        passage: The passage (its `rank` and BM25 `score` from the search).
        answer: The reader's answer from it ("" when it could not be read).
        score: The reader's score of that answer: its mean log-probability per token (higher is surer).
        error: Why the passage could not be read (too long with this question, say), else "".
        prompt_tokens: The question and passage in tokens (0 if not read).
        answer_tokens: The answer in tokens.
        retrieval: The passage's log-probability among the passages found for the question (a
            log-softmax of their BM25 scores); None until `choose` sets it.
        joint: The score the choice compares: `score` plus the retrieval weight times `retrieval`;
            None until `choose` sets it, or when the passage was not read.
        finish_reason: Why the reading ended: "stop", or "length" where max_new_tokens cut it.
    """

    passage: Passage
    answer: str = ""
    score: float | None = None
    error: str = ""
    prompt_tokens: int = 0
    answer_tokens: int = 0
    retrieval: float | None = None
    joint: float | None = None
    finish_reason: str = "stop"

    @classmethod
    def read(cls, passage: Passage, row: Row | None, error: str = "") -> Candidate:
        """The candidate of a passage from its finished row (None: it could not be read, `error` says why)."""
        from edgeqa.runtime import FinishReason

        if row is None:
            return cls(passage, error=error)
        if row.finish_reason in (FinishReason.FAILED, FinishReason.CANCELLED):
            return cls(passage, error=f"reading it failed: {row.error or row.finish_reason}")
        return cls(
            passage,
            answer=row.text,
            score=row.score,
            prompt_tokens=len(row.ids),
            answer_tokens=len(row.tokens),
            finish_reason=str(row.finish_reason or FinishReason.STOP),
        )

    def to_dict(self) -> dict[str, Any]:
        data = {
            "answer": self.answer,
            "reader_score": _rounded(self.score),
            "retrieval_logprob": _rounded(self.retrieval),
            "joint_score": _rounded(self.joint),
            "source": self.passage.source,
            "rank": self.passage.rank,
            "bm25": _rounded(self.passage.score),
            "title": self.passage.title,
            "heading": self.passage.heading,
            "passage": self.passage.text,
            "finish_reason": self.finish_reason,
        }
        return data | ({"error": self.error} if self.error else {})


@dataclass(frozen=True)
class DocumentAnswer:
    """The answer to a question from the index.

    Attributes:
        question: The question.
        text: The chosen answer, or `NO_PASSAGE`.
        source: The passage the answer was read from; None when no passage matched.
        candidates: Every passage read, best BM25 rank first, with the reader's answer and score, the
            passage's retrieval log-probability and the joint score.
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

    @property
    def finish_reason(self) -> str:
        """Why the chosen reading ended ("length": max_new_tokens cut it); "stop" when none was chosen."""
        chosen = self.chosen
        return chosen.finish_reason if chosen else "stop"

    def to_dict(self, candidates: bool = True) -> dict[str, Any]:
        chosen = self.chosen
        data = {
            "question": self.question,
            "answer": self.text,
            "found": self.found,
            "source": self.source.source if self.source else None,
            "reader_score": None if chosen is None else _rounded(chosen.score),
            "joint_score": None if chosen is None else _rounded(chosen.joint),
            "finish_reason": self.finish_reason,
        }
        return data | ({"candidates": [c.to_dict() for c in self.candidates]} if candidates else {})


def choose(
    question: str,
    candidates: Sequence[Candidate],
    no_answer: str = NO_ANSWER,
    retrieval_weight: float = RETRIEVAL_WEIGHT,
) -> DocumentAnswer:
    """The answer with the best joint score (see the module's docstring), passing over readings that
    say the passage does not answer (`no_answer`) or are empty; `NO_PASSAGE` without candidates,
    `NOT_ANSWERED` when no reading answers. The candidates returned carry `retrieval` and `joint`.

    Raises:
        InputError: a retrieval weight out of range, or no passage could be read with the question (the
            first one's error says why).
    """
    check_retrieval_weight(retrieval_weight)
    if not candidates:
        return DocumentAnswer(question, NO_PASSAGE, None, [])
    logprobs = retrieval_logprobs([c.passage.score for c in candidates])
    candidates = [_joined(c, logprob, retrieval_weight) for c, logprob in zip(candidates, logprobs, strict=True)]
    readable = [c for c in candidates if c.joint is not None]
    if not readable:
        raise InputError(f"none of the {len(candidates)} passages found could be read: {candidates[0].error}")
    answering = [c for c in readable if c.answer.strip() and c.answer.strip().lower() != no_answer.strip().lower()]
    if not answering:
        return DocumentAnswer(question, NOT_ANSWERED, None, candidates)
    best = max(answering, key=lambda c: (c.joint, -c.passage.rank))
    return DocumentAnswer(question, best.answer, best.passage, candidates)


def _joined(candidate: Candidate, retrieval: float, retrieval_weight: float) -> Candidate:
    """The candidate with its retrieval log-probability and joint score; one without a finite reader's
    score is unread, and says why (NaN is neither above nor below any score: `max` could keep it)."""
    score = candidate.score
    if candidate.error or score is None or not math.isfinite(score):
        error = candidate.error or f"the reader gave its answer no usable score ({score})"
        return replace(candidate, retrieval=retrieval, joint=None, error=error)
    return replace(candidate, retrieval=retrieval, joint=score + retrieval_weight * retrieval)


def retrieval_logprobs(bm25: Sequence[float]) -> list[float]:
    """Each passage's log-probability among those found: a log-softmax of their BM25 scores."""
    top = max(bm25)
    log_total = top + math.log(sum(math.exp(score - top) for score in bm25))
    return [score - log_total for score in bm25]


def check_retrieval_weight(weight: float) -> float:
    """`weight` if it is a usable retrieval weight, else an `InputError` naming the range."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= MAX_RETRIEVAL_WEIGHT:
        raise InputError(
            f"retrieval weight is {weight!r}; give 0 (the reader's score alone) to {MAX_RETRIEVAL_WEIGHT:g}"
        )
    return float(weight)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4) + 0.0  # + 0.0: never "-0.0"
