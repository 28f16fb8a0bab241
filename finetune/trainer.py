"""edgeqa's Seq2SeqTrainer: the recipe's training arguments, answer-length batches, FSDP 2 generation."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from edgeqa.finetune.config import FinetuneConfig

# What transformers 4.x's TrainingArguments hand to accelerate through os.environ: torch.compile's
# backend, mixed precision, FSDP's options.
HANDED_TO_ACCELERATE = ("ACCELERATE_", "FSDP_")


@contextlib.contextmanager
def accelerate_environment_kept() -> Iterator[None]:
    """Undo, on leaving, what training arguments wrote to the process's environment for accelerate.

    transformers 4.x hands `torch_compile` to the Accelerator as ACCELERATE_DYNAMO_BACKEND and never takes
    it back: every later run in the process, and every process it starts, would compile its model too.
    """
    before = {k: v for k, v in os.environ.items() if k.startswith(HANDED_TO_ACCELERATE)}
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith(HANDED_TO_ACCELERATE) and k not in before]:
            del os.environ[key]
        os.environ.update(before)


def world_size() -> int:
    """Processes in this run (set by torchrun and `accelerate launch`; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(
    config: FinetuneConfig,
    use_cpu: bool,
    bf16: bool,
    tf32: bool,
    overrides: dict[str, Any] | None = None,
) -> Seq2SeqTrainingArguments:
    """`Seq2SeqTrainingArguments` for the run; `overrides` are set over edgeqa's choices."""
    tutorial = config.recipe == "tutorial"
    settings: dict[str, Any] = dict(
        output_dir=str(config.output_dir),
        eval_strategy="epoch",
        save_strategy="epoch",
        learning_rate=config.learning_rate_for(world_size()),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="rougeL",
        greater_is_better=True,
        predict_with_generate=True,
        bf16=bf16,
        tf32=False if tutorial and not use_cpu else (tf32 or None),
        # transformers' NaN/inf loss filter waits for the GPU every step (+17% samples/s without, on an H100).
        logging_nan_inf_filter=tutorial,
        torch_compile=config.torch_compile,
        use_cpu=use_cpu,
        seed=config.seed,
        logging_steps=config.logging_steps,
        report_to=[],
    )
    # Answer-length batches come from EdgeQATrainer's own sampler.
    settings |= length_grouping(config.grouping == "prompt")
    return Seq2SeqTrainingArguments(**(settings | (overrides or {})))


def length_grouping(on: bool) -> dict[str, Any]:
    """The training-arguments field that turns transformers' prompt-length batches on or off:
    `group_by_length` up to 4.x, `train_sampling_strategy` from 5.0 (which dropped the former)."""
    if "group_by_length" in _argument_fields():
        return {"group_by_length": on}
    return {"train_sampling_strategy": "group_by_length" if on else "random"}


def groups_by_length(args: Seq2SeqTrainingArguments) -> bool:
    """Whether transformers batches these arguments' training records by prompt length."""
    return bool(getattr(args, "group_by_length", False)) or getattr(args, "train_sampling_strategy", "") == (
        "group_by_length"
    )


def _argument_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}


class EdgeQATrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer that can batch by answer length and generate under FSDP 2.

    Args:
        answer_lengths: Label length of each training record; given, training batches are
            grouped by it (transformers' length grouping only looks at the prompts).
    """

    def __init__(self, *args: Any, answer_lengths: list[int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.answer_lengths = answer_lengths

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.answer_lengths is None:
            return super()._get_train_sampler(train_dataset)
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(batch, lengths=self.answer_lengths)

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> Any:
        with _unsharded_root(self.model, active=not prediction_loss_only):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)


@contextlib.contextmanager
def _unsharded_root(model: Any, active: bool) -> Iterator[None]:
    """Gather the root's own FSDP 2 shards (embeddings, final norms, lm_head) around `generate`.

    `generate` calls the encoder directly, so the root module's forward hook never gathers its
    parameters and T5's final layer norm meets a sharded tensor; Seq2SeqTrainer does this only for
    FSDP 1 (`summon_full_params`).
    """
    fsdp2 = torch.distributed.is_available() and _is_fsdp2(model)
    if not (active and fsdp2):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def _is_fsdp2(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
