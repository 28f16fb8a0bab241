"""One request's journey through the batcher: the job, the events it receives, its text as it grows."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from edgeqa.runtime import Answer, GenerationOptions
from edgeqa.runtime.tokenizer import PromptTokenizer


@dataclass(frozen=True)
class Result:
    """A finished answer with the server's timings.

    Attributes:
        answer: The runtime's `Answer` (its encode_ms: tokenization and encoder; generate_ms: encoder and decoder).
        finish_reason: "stop" (end of answer or a stop string) or "length" (max tokens reached).
        queue_ms: Time between queueing and the start of its batch.
        encode_ms: Tokenization plus the batch's encoder run.
        decode_ms: Decoder steps while the row was in its batch.
        truncated: The question was cut to the artifact's input limit.
    """

    answer: Answer
    finish_reason: str
    queue_ms: float
    encode_ms: float
    decode_ms: float
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.answer.to_dict(),
            "tokens": self.answer.tokens,
            "finish_reason": self.finish_reason,
            "queue_ms": round(self.queue_ms, 2),
            "encode_ms": round(self.encode_ms, 2),
            "decode_ms": round(self.decode_ms, 2),
            "truncated": self.truncated,
        }


@dataclass(frozen=True)
class Delta:
    """New answer text (only for streaming jobs)."""

    text: str


@dataclass(frozen=True)
class Done:
    result: Result


@dataclass(frozen=True)
class Failed:
    message: str
    cancelled: bool = False


Event = Delta | Done | Failed


@dataclass(eq=False)
class Job:
    """One question to answer. `eq=False`: jobs compare by identity (queue removal).

    Attributes:
        ids: Prompt token ids (already truncated).
        opts: Generation options.
        stream: Send `Delta` events as the text grows.
        stop: Stop strings: the answer ends before the first one (OpenAI's `stop`).
        truncated: The question was cut to the input limit.
        tokenize_ms: Time spent tokenizing, by the caller.
    """

    ids: list[int]
    opts: GenerationOptions
    stream: bool = False
    stop: tuple[str, ...] = ()
    truncated: bool = False
    tokenize_ms: float = 0.0
    events: asyncio.Queue[Event] | None = field(default=None, repr=False)
    cancelled: bool = False
    finished: bool = False
    enqueued: float = 0.0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    def bind(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        self._loop = loop
        self.events = asyncio.Queue()
        self.enqueued = now

    def emit(self, event: Event) -> None:
        """Hand an event to the caller's event loop (from any thread); dropped if the loop is gone."""
        if self._loop is None or self.events is None:
            return
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop was closed: nobody is waiting any more
            pass


class RowText:
    """A row's tokens and text as they grow: stop strings, held-back text, the finish."""

    def __init__(self, job: Job, tokenizer: PromptTokenizer, eos: int, started: float, encoded: float):
        self.job = job
        self.tokenizer = tokenizer
        self.eos = eos
        self.started = started
        self.encoded = encoded
        self.tokens: list[int] = []
        self.shown = ""

    def advance(self, token: int) -> bool:
        """Add one token; returns True when the row is finished (and has been reported)."""
        self.tokens.append(token)
        if token == self.eos:
            self._finish("stop")
            return True
        text = self.tokenizer.decode(self.tokens) if (self.job.stream or self.job.stop) else ""
        cut = _stop_at(text, self.job.stop)
        if cut is not None:
            self._finish("stop", text[:cut])
            return True
        if len(self.tokens) >= self.job.opts.max_new_tokens:
            self._finish("length")
            return True
        if self.job.stream:
            self._show(text[: len(text) - _held_back(text, self.job.stop)])
        return False

    def finish_with(self, tokens: list[int]) -> None:
        """Finish with a whole answer at once (beam search)."""
        self.tokens = list(tokens)
        text = self.tokenizer.decode(self.tokens)
        cut = _stop_at(text, self.job.stop)
        reason = "stop" if cut is not None or (tokens and tokens[-1] == self.eos) else "length"
        self._finish(reason, text if cut is None else text[:cut])

    def _show(self, text: str) -> None:
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.job.emit(Delta(text[len(self.shown) :]))
            self.shown = text

    def _finish(self, reason: str, text: str | None = None) -> None:
        finished = time.perf_counter()
        text = self.tokenizer.decode(self.tokens) if text is None else text  # verbatim before a stop string
        if self.job.stream:
            if text.startswith(self.shown):
                self._show(text)
            else:  # the tokenizer rewrote earlier text (rare): the stream keeps what it sent
                text = self.shown
        job = self.job
        encoder_ms = (self.encoded - self.started) * 1000
        answer = Answer(
            text=text,
            tokens=self.tokens,
            prompt_tokens=len(job.ids),
            encode_ms=job.tokenize_ms,
            generate_ms=(finished - self.started) * 1000,
        )
        job.finished = True
        job.emit(
            Done(
                Result(
                    answer=answer,
                    finish_reason=reason,
                    queue_ms=(self.started - job.enqueued) * 1000 if job.enqueued else 0.0,
                    encode_ms=job.tokenize_ms + encoder_ms,
                    decode_ms=(finished - self.encoded) * 1000,
                    truncated=job.truncated,
                )
            )
        )


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in text, or None."""
    found = [text.find(stop) for stop in stops if stop and stop in text]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might begin a stop string, and so cannot be streamed yet."""
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    return held
