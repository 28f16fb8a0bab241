"""Trainer callbacks that the fine-tuning benchmark measures with: the run's clocks and the batches' padding."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepClock(TrainerCallback):
    """The training window: from the end of the warm-up step to the end of the last step, the
    evaluations and checkpoints between epochs left out; and the whole of `Trainer.train`.

    The GPU is waited for only where a clock is read at a boundary, never after every step. The
    warm-up is at most half the run's steps, so a large batch over a few epochs is still timed.

    Args:
        warmup_steps: Steps left out of the training window.
        now: The clock (seconds).
    """

    def __init__(self, warmup_steps: int, now: Callable[[], float] = time.perf_counter):
        self.warmup_steps = warmup_steps
        self.now = now
        self.train_began = self.train_ended = 0.0
        self.start: float | None = None
        self.end = 0.0
        self.steps = 0
        self.paused_at: float | None = None
        self.paused = 0.0  # seconds between epochs (evaluation, checkpoint) inside the window
        self.last_loss: float | None = None

    @property
    def seconds(self) -> float:
        """The training window's seconds, evaluations and checkpoints left out."""
        return self.end - self.start - self.paused if self.start is not None else 0.0

    def _read(self) -> float:
        _synchronize()
        return self.now()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.warmup_steps = min(self.warmup_steps, state.max_steps // 2)
        self.train_began = self._read()
        if self.warmup_steps == 0:
            self.start = self.train_began

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.paused_at is not None:
            self.paused += self.now() - self.paused_at
            self.paused_at = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.warmup_steps:
            self.start = self._read()
        elif self.start is not None and state.global_step == state.max_steps:
            self.end, self.steps = self._read(), state.global_step - self.warmup_steps

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The epoch's evaluation and checkpoint come next; the window resumes at the next step.
        if self.start is not None and state.global_step < state.max_steps:
            self.paused_at = self._read()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.train_ended = self._read()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])


class PaddingGauge(TrainerCallback):
    """Share of padding in the answers (labels) and prompts of the training batches (up to `batches` of an epoch)."""

    def __init__(self, batches: int = 100) -> None:
        self.batches = batches
        self.answer = self.prompt = 0.0

    def on_train_end(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kw: Any) -> None:
        padded = real = prompt_padded = prompt_real = 0
        # After training, so reading the batches cannot change the run.
        for batch in itertools.islice(train_dataloader, self.batches):
            labels, mask = batch["labels"], batch["attention_mask"]
            real += int((labels != -100).sum())
            padded += int((labels == -100).sum())
            prompt_real += int(mask.sum())
            prompt_padded += int((mask == 0).sum())
        self.answer = padded / max(1, padded + real)
        self.prompt = prompt_padded / max(1, prompt_padded + prompt_real)
