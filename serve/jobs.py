"""One request's journey through the batcher: the job and the events it receives."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from edgeqa.runtime import Answer, Row


@dataclass(frozen=True)
class Result:
    """A finished answer with the server's timings.

    Attributes:
        answer: The runtime's `Answer` (its encode_ms: tokenization and encoder; generate_ms: encoder and decoder).
        queue_ms: Time between queueing and the start of its batch.
        encode_ms: Tokenization plus the batch's encoder run.
        decode_ms: Decoder steps while the row was in its batch.
        truncated: The question was cut to the artifact's input limit.
    """

    answer: Answer
    queue_ms: float
    encode_ms: float
    decode_ms: float
    truncated: bool

    @property
    def finish_reason(self) -> str:
        """The answer's: "stop" (end of answer or a stop string) or "length" (max tokens reached)."""
        return str(self.answer.finish_reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.answer.to_dict(),
            "tokens": self.answer.tokens,
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
    """One question to answer: the decoder's row, and what the server adds around it.
    `eq=False`: jobs compare by identity (queue removal).

    Attributes:
        row: The decoder row (prompt ids, options, stop strings, streaming); the runtime fills in
            its answer.
        truncated: The question was cut to the input limit.
        tokenize_ms: Time spent tokenizing, by the caller.
        finished: Its last event (`Done` or `Failed`) has been sent.
        id: Names the request in the server's log and in a failure's message.
    """

    row: Row
    truncated: bool = False
    tokenize_ms: float = 0.0
    events: asyncio.Queue[Event] | None = field(default=None, repr=False)
    finished: bool = False
    enqueued: float = 0.0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    id: str = field(default_factory=lambda: f"req-{uuid.uuid4().hex[:16]}")

    @property
    def cancelled(self) -> bool:
        return self.row.cancelled

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

    def result(self) -> Result:
        """The finished row's answer with the server's timings."""
        row = self.row
        return Result(
            answer=Answer.of(row, encode_ms=self.tokenize_ms),
            queue_ms=(row.joined_at - self.enqueued) * 1000 if self.enqueued else 0.0,
            encode_ms=self.tokenize_ms + row.encoder_ms,
            decode_ms=row.decode_ms,
            truncated=self.truncated,
        )
