"""A row of the decoder: one answer being generated, what its caller asked and what it has become."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from edgeqa.runtime.inputs import stop_strings, token_ids
from edgeqa.runtime.options import GenerationOptions


class FinishReason(StrEnum):
    """Why a row left the decoder."""

    STOP = "stop"  # end of answer, or a stop string
    LENGTH = "length"  # max_new_tokens reached
    CANCELLED = "cancelled"  # its caller cancelled it
    FAILED = "failed"  # decoding it failed (`Row.error` says why)


@dataclass(eq=False)
class Row:
    """One answer being generated. `eq=False`: rows compare by identity.

    The caller sets the first five fields; the decoder fills in the rest. Any thread may call
    `cancel`; the row leaves at the decoder's next step.

    Attributes:
        ids: Prompt token ids, at most the artifact's input limit (`Decoder.prompts` makes them).
        options: How to generate.
        stop: Stop strings: the answer ends before the first one (OpenAI's `stop`: any list of strings).
        stream: Report new text at every step (`Update.delta`); otherwise text comes at the end.
        scored: Keep the answer's log-probability (`log_prob`, `score`): a reader choosing among the
            answers of several passages compares them by it.
        tokens: Answer token ids so far (end-of-answer included once produced).
        text: The answer's text once finished (verbatim before a stop string).
        log_prob: With `scored`, once finished: the sum of the model's log-probabilities of the answer's
            tokens (greedy and sampled rows: of the chosen tokens under the plain model, whatever the
            sampling options; beam search: the search's own sum, its logits processors applied).
        finish_reason: None while the row is generating.
        error: What went wrong, when finish_reason is FAILED (its batch-mates carry on).
        joined_at, encoded_at, finished_at: `time.perf_counter()` when the row joined, when its
            encoder run ended and when it finished.
    """

    ids: list[int]
    options: GenerationOptions
    stop: tuple[str, ...] = ()
    stream: bool = False
    scored: bool = False
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    log_prob: float | None = None
    finish_reason: FinishReason | None = None
    error: Exception | None = None
    joined_at: float = 0.0
    encoded_at: float = 0.0
    finished_at: float = 0.0
    cancelled: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        """Ids as a list of ints and stop strings as a tuple, from any collection of them.

        Raises:
            InputError: ids that are not integers (a float would be cut silently), or `stop` that is one
                string or holds something else.
        """
        self.ids = token_ids(self.ids)
        self.stop = stop_strings(self.stop)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def score(self) -> float | None:
        """The length-normalised log-probability of the answer (mean over its tokens; higher is more
        confident), once a `scored` row has finished."""
        if self.log_prob is None or not self.tokens:
            return None
        return self.log_prob / len(self.tokens)

    @property
    def encoder_ms(self) -> float:
        """Its batch's encoder run."""
        return (self.encoded_at - self.joined_at) * 1000

    @property
    def decode_ms(self) -> float:
        """Decoder steps while the row was in its batch."""
        return (self.finished_at - self.encoded_at) * 1000

    def cancel(self) -> None:
        """Ask the decoder to drop this row (from any thread); it leaves at the next step."""
        self.cancelled = True

    def finish(self, reason: FinishReason, text: str = "", error: Exception | None = None) -> None:
        self.finish_reason, self.text, self.error = reason, text, error
        self.finished_at = time.perf_counter()


def until_eos(tokens: list[int], eos: int) -> list[int]:
    """The tokens up to and including the first end-of-answer (all of them if there is none)."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@dataclass(frozen=True)
class Update:
    """News of one row from a decoder step: text to stream, and whether the row has finished.

    Attributes:
        row: The row (its `finish_reason`, `tokens` and `text` once finished).
        delta: New answer text (streaming rows only; the last piece comes with the finish).
    """

    row: Row
    delta: str = ""

    @property
    def finished(self) -> bool:
        return self.row.finished
