"""The batcher: one inference thread schedules queued requests onto the runtime's decoder.

It only schedules; the runtime decodes (`edgeqa.runtime.Decoder`), so a served answer is the
runtime's answer. Requests wait in a bounded queue. The thread takes the oldest one and up to
`max_batch_size - 1` others of the closest prompt lengths (waiting at most `batch_wait_ms` for
them, unless one caller is alone: one request queued after a batch of one), lets them join the
decoder together and steps it until they are done, handing each row's news to its caller. A row
leaves as soon as its answer is finished or its caller is gone, so the batch shrinks as it goes.
Beam search requests run alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from edgeqa.errors import EdgeQAError
from edgeqa.runtime import Decoder, FinishReason, QAModel
from edgeqa.serve.jobs import Delta, Done, Failed, Job, Result

logger = logging.getLogger(__name__)


class QueueFull(EdgeQAError):
    """The request queue is full; the caller should retry later."""


class EngineState(StrEnum):
    """The inference thread's state: loading -> ready | failed."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Engine:
    """The inference thread and its queue.

    Args:
        load: Returns the model; called on the inference thread, so the server answers
            /health (503) while it runs.
        max_batch_size: Most rows decoded together.
        batch_wait_ms: Longest wait for more requests once one is queued.
        max_queue: Most requests waiting (not counting the rows being decoded).
        on_batch, on_tokens, on_cancel: Metric hooks (batch size; tokens generated; a cancelled row).
    """

    def __init__(
        self,
        load: Callable[[], QAModel],
        max_batch_size: int = 8,
        batch_wait_ms: float = 5.0,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
        on_tokens: Callable[[int], None] | None = None,
        on_cancel: Callable[[], None] | None = None,
    ):
        self._load = load
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_queue = max_queue
        self._on_batch = on_batch or (lambda n: None)
        self._on_tokens = on_tokens or (lambda n: None)
        self._on_cancel = on_cancel or (lambda: None)
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="edgeqa-inference", daemon=True)
        self.model: QAModel | None = None
        self.decoder: Decoder | None = None
        self.state = EngineState.LOADING
        self.error: str | None = None
        self.ready = threading.Event()
        self.active_rows = 0
        self.cancelled_rows = 0
        self._last_rows = 1

    # ------------------------------------------------------------ the caller's side (event loop)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued and running, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs, all or none; events go to each job's asyncio queue on the running loop.

        Raises:
            QueueFull: fewer than len(jobs) places are left.
        """
        loop = asyncio.get_running_loop()
        with self._cond:
            if len(self._pending) + len(jobs) > self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry shortly")
            now = time.perf_counter()
            for job in jobs:
                job.bind(loop, now)
                self._pending.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """Drop a job: out of the queue now, or out of the decoder at its next step."""
        if job.finished:
            return
        job.row.cancel()
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._cancelled(job)

    # ------------------------------------------------------------ the inference thread

    def _main(self) -> None:
        try:
            self.model = self._load()
            self.decoder = self.model.decoder()
            self.model.answer("warm up", max_new_tokens=2)
        except Exception as e:  # noqa: BLE001 (a failed load is reported through /health and the exit code)
            self.error = str(e)
            self.state = EngineState.FAILED
            logger.error("edgeqa serve: the model could not be loaded: %s", e)
            self.ready.set()
            return
        self.state = EngineState.READY
        self.ready.set()
        while (batch := self._take()) is not None:
            try:
                self._on_batch(len(batch))
                self._decode(batch)
            except Exception as e:  # noqa: BLE001 (one failed batch must not stop the server)
                logger.exception("edgeqa serve: a batch failed")
                self.decoder = self.model.decoder()  # whatever the failed one held is dropped
                for job in batch:
                    if not job.finished:
                        job.finished = True
                        job.emit(Failed(f"generation failed for request {job.id}: {e}"))
            finally:
                self.active_rows = 0

    def _take(self) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._pending:
                    if self._stopping:
                        return None
                    self._cond.wait()
                # A lone caller (one request queued, the last batch a single row) starts at once: the
                # wait only pays when others are asking too.
                crowd = len(self._pending) > 1 or self._last_rows > 1
                deadline = time.monotonic() + (self.batch_wait_s if crowd else 0.0)
                while len(self._pending) < self.max_batch_size and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._pending:  # callers that left while it waited took their requests with them
                    break
            first = self._pending.popleft()
            self.active_rows = 1  # under the lock: the job is never in neither place (the drain looks)
            if first.row.options.num_beams > 1:
                self._last_rows = 1
                return [first]
            window = [job for job in list(self._pending)[: 4 * self.max_batch_size] if job.row.options.num_beams == 1]
            window.sort(key=lambda job: abs(len(job.row.ids) - len(first.row.ids)))  # stable: the oldest first on ties
            picked = window[: self.max_batch_size - 1]
            for job in picked:
                self._pending.remove(job)
            self.active_rows = self._last_rows = 1 + len(picked)
            return [first, *picked]

    def _cancelled(self, job: Job) -> None:
        job.finished = True
        with self._cond:  # both threads count here (the lock is re-entrant)
            self.cancelled_rows += 1
        self._on_cancel()
        job.emit(Failed("cancelled", cancelled=True))

    def _decode(self, jobs: list[Job]) -> None:
        """Let the jobs' rows join the decoder and step it until every one has finished."""
        decoder = self.decoder
        assert decoder is not None
        by_row = {job.row: job for job in jobs}
        decoder.join([job.row for job in jobs])
        self.active_rows = live = len(jobs)
        while decoder.busy:
            updates = decoder.step()
            self._on_tokens(live)
            for update in updates:
                job = by_row[update.row]
                if update.delta:
                    job.emit(Delta(update.delta))
                if update.finished:
                    live -= 1
                    self._finished(job)
            self.active_rows = live

    def _finished(self, job: Job) -> None:
        reason = job.row.finish_reason
        if reason == FinishReason.CANCELLED:
            self._cancelled(job)
            return
        job.finished = True
        if reason == FinishReason.FAILED:
            logger.error("edgeqa serve: request %s failed: %s", job.id, job.row.error)
            job.emit(Failed(f"generation failed for request {job.id}: {job.row.error}"))
        else:
            job.emit(Done(job.result()))


__all__ = ["Delta", "Done", "Engine", "EngineState", "Failed", "Job", "QueueFull", "Result"]
