"""The batcher: one inference thread owns the model and decodes queued requests together.

Requests wait in a bounded queue. The thread takes the oldest one and up to `max_batch_size - 1`
others of the closest prompt lengths (waiting at most `batch_wait_ms` for them, unless one caller
is alone: one request queued after a batch of one), encodes them as
one batch and decodes step by step. A row leaves the batch as soon as its answer is finished or
its caller is gone, and its caches are dropped, so the batch shrinks as it goes. Beam search
requests run alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeqa.errors import EdgeQAError
from edgeqa.runtime import QAModel
from edgeqa.runtime.generate import beam_search, choose_tokens
from edgeqa.serve.jobs import Delta, Done, Failed, Job, Result, RowText

logger = logging.getLogger(__name__)


class QueueFull(EdgeQAError):
    """The request queue is full; the caller should retry later."""


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
        self.state = "loading"  # loading -> ready | failed
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
        """Drop a job: out of the queue now, or out of its batch at the next step."""
        if job.finished:
            return
        job.cancelled = True
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._cancelled(job)

    # ------------------------------------------------------------ the inference thread

    def _main(self) -> None:
        try:
            self.model = self._load()
            warm = Job(
                ids=self.model.tokenizer.encode(["warm up"])[0], opts=self.model.defaults.updated(max_new_tokens=2)
            )
            self._decode([warm])
        except Exception as e:  # noqa: BLE001 (a failed load is reported through /health and the exit code)
            self.error = str(e)
            self.state = "failed"
            logger.error("edgeqa serve: the model could not be loaded: %s", e)
            self.ready.set()
            return
        self.state = "ready"
        self.ready.set()
        while (batch := self._take()) is not None:
            self._on_batch(len(batch))
            try:
                if batch[0].opts.num_beams > 1:
                    self._beam(batch[0])
                else:
                    self._decode(batch)
            except Exception as e:  # noqa: BLE001 (one failed batch must not stop the server)
                logger.exception("edgeqa serve: a batch failed")
                for job in batch:
                    if not job.finished:
                        job.finished = True
                        job.emit(Failed(f"generation failed: {e}"))
            finally:
                self.active_rows = 0

    def _take(self) -> list[Job] | None:
        with self._cond:
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
            first = self._pending.popleft()
            self.active_rows = 1  # under the lock: the job is never in neither place (the drain looks)
            if first.opts.num_beams > 1:
                self._last_rows = 1
                return [first]
            window = [job for job in list(self._pending)[: 4 * self.max_batch_size] if job.opts.num_beams == 1]
            window.sort(key=lambda job: abs(len(job.ids) - len(first.ids)))  # stable: the oldest first on ties
            picked = window[: self.max_batch_size - 1]
            for job in picked:
                self._pending.remove(job)
            self.active_rows = self._last_rows = 1 + len(picked)
            return [first, *picked]

    def _cancelled(self, job: Job) -> None:
        job.finished = True
        self.cancelled_rows += 1
        self._on_cancel()
        job.emit(Failed("cancelled", cancelled=True))

    def _pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        assert self.model is not None
        width = max(len(ids) for ids in rows)
        input_ids = np.full((len(rows), width), self.model.manifest.special_tokens.pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return input_ids, mask

    def _decode(self, jobs: list[Job]) -> None:
        """Greedy and sampled rows together; each row leaves at its own end."""
        model = self.model
        assert model is not None
        special = model.manifest.special_tokens
        started = time.perf_counter()
        state = model.graphs.encode(*self._pad([job.ids for job in jobs]))
        encoded = time.perf_counter()
        rows = [RowText(job, model.tokenizer, special.eos, started, encoded) for job in jobs]
        rngs = [np.random.default_rng(job.opts.seed) for job in jobs]
        # As in greedy_tokens: numpy calls right after a step run with cold caches, so the loop
        # writes into one preallocated array and copies nothing while every row chooses alike.
        longest = 1 + max(job.opts.max_new_tokens for job in jobs)  # every row has left by then
        sequences = np.full((len(rows), longest), special.decoder_start, dtype=np.int64)
        self.active_rows = len(rows)
        length = 1
        while rows:
            logits = model.graphs.step(state, sequences[:, length - 1]).astype(np.float32, copy=False)  # fresh
            tokens = sequences[:, length]
            groups = _groups([row.job.opts for row in rows])
            if len(groups) == 1:
                tokens[:] = choose_tokens(sequences[:, :length], logits, groups[0][1], special.eos, rngs[0])
            else:
                for group, opts in groups:
                    rng = rngs[group[0]]  # a sampled row is a group of its own, with its own generator
                    tokens[group] = choose_tokens(sequences[group, :length], logits[group], opts, special.eos, rng)
            length += 1
            self._on_tokens(len(rows))
            keep = []
            for index, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
                if row.job.cancelled:
                    self._cancelled(row.job)
                elif not row.advance(token):
                    keep.append(index)
            if len(keep) < len(rows):
                if keep:
                    state.select(keep)
                sequences = sequences[keep]
                rows = [rows[i] for i in keep]
                rngs = [rngs[i] for i in keep]
                self.active_rows = len(rows)

    def _beam(self, job: Job) -> None:
        model = self.model
        assert model is not None
        special = model.manifest.special_tokens
        started = time.perf_counter()
        state = model.graphs.encode(*self._pad([job.ids]))
        encoded = time.perf_counter()
        self.active_rows = 1
        tokens = beam_search(model.graphs, state, job.opts, special.decoder_start, special.eos)[0]
        self._on_tokens(len(tokens))
        row = RowText(job, model.tokenizer, special.eos, started, encoded)
        row.finish_with(tokens)


def _groups(options: list[Any]) -> list[tuple[list[int], Any]]:
    """Row indices that can choose their tokens in one call: equal greedy options; each sampled row alone."""
    groups: dict[Any, list[int]] = {}
    out: list[tuple[list[int], Any]] = []
    for index, opts in enumerate(options):
        if opts.do_sample:
            out.append(([index], opts))
        else:
            groups.setdefault(opts, []).append(index)
    return out + [(indices, opts) for opts, indices in groups.items()]


__all__ = ["Delta", "Done", "Engine", "Failed", "Job", "QueueFull", "Result"]
