"""`finetune`: Seq2SeqTrainer on a T5 checkpoint, ROUGE each epoch, best model kept, resumable."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    GenerationConfig,
    PrinterCallback,
    TrainerCallback,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from edgeqa.atomic import replace_folder, temporary_pattern, write_atomic
from edgeqa.checkpoint import HELDOUT, TrainingRecord, check_model_type, model_load_errors
from edgeqa.errors import ConfigError, ModelError
from edgeqa.finetune.config import FinetuneConfig
from edgeqa.finetune.data import heldout_record, load_raw, prepare_splits, tokenize
from edgeqa.finetune.portable import make_portable
from edgeqa.finetune.resume import RUN_CONFIG, check_unchanged, repoint_best_checkpoint, save_run_config
from edgeqa.finetune.t5_heads import model_class, one_embedding_module
from edgeqa.finetune.trainer import EdgeQATrainer, accelerate_environment_kept, training_arguments
from edgeqa.metrics import exact_match, rouge
from edgeqa.tied_weights import tie_problem

logger = logging.getLogger(__name__)

FINAL = "final"
METRICS = "metrics.json"
MAX_HELDOUT = 1000
OFFLINE_ADVICE = "Offline or without a cached copy, pass a local checkpoint folder: --model path/to/flan-t5-base"


@dataclass(frozen=True)
class FinetuneResult:
    """A finished run.

    Attributes:
        final_dir: The saved model (`OUTPUT/final`).
        global_step: Optimizer steps trained.
        history: Every evaluation's metrics.
        best_checkpoint: The checkpoint `final_dir` was saved from.
        main_process: Whether this process wrote the files (under a launcher, one does).
        saved_step: The optimizer step of the saved model: the best checkpoint's (default: the last step).
    """

    final_dir: Path
    global_step: int
    history: list[dict[str, float]]
    best_checkpoint: str | None
    main_process: bool = True
    saved_step: int | None = None


def prepare_output_dir(config: FinetuneConfig) -> str | None:
    """Refuse a non-empty output folder unless resuming or overwriting; return the checkpoint to resume.

    With `overwrite`, a folder holding anything but a previous run's files is refused, so that a
    mistyped `--output` cannot delete anything else; `clear_previous_run` deletes the old run once
    the rest of the set-up has succeeded.
    """
    out = config.output_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; pass a folder for the run")
    if config.resume:
        last = last_complete_checkpoint(out) if out.is_dir() else None
        if last is None:
            raise ConfigError(f"--resume: {out} holds no complete checkpoint-* folder to resume from")
        check_unchanged(config)
        logger.info("resuming from %s", last)
        return last
    try:  # here, before any data or model loads: a folder this user cannot write is refused at once
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run folder {out}: {e.strerror or e}; pick another --output") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in the run folder {out}; pick another --output")
    # a run that ended before its first checkpoint left only its settings: it can simply start again
    if any(not _SETTINGS.fullmatch(p.name) for p in out.iterdir()):
        if not config.overwrite:
            raise ConfigError(f"output folder {out} is not empty; pass --resume to continue it or --overwrite")
        foreign = sorted(p.name for p in out.iterdir() if not _is_run_file(p.name))
        if foreign:
            raise ConfigError(
                f"--overwrite: {out} holds files that are not from an edgeqa run ({', '.join(foreign[:3])}); "
                "pick another --output"
            )
    return None


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint the Trainer finished saving: it writes `trainer_state.json` last, so a folder
    whose state does not read was cut off mid-save (Ctrl-C, a kill, a full disk). Such newer folders are
    deleted (the resumed run saves those steps again), so that the Trainer's rotation, which keeps the
    newest, cannot keep a broken one over whole ones."""
    numbered = (
        (int(match.group(1)), path) for path in out.iterdir() if (match := re.fullmatch(_CHECKPOINT, path.name))
    )
    for _, path in sorted(numbered, reverse=True):
        try:
            json.loads((path / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            logger.warning("%s was cut off while it was saved: removed, resuming from an earlier checkpoint", path)
            shutil.rmtree(path, ignore_errors=True)  # every process may get here: whoever is first removes it
            continue
        return str(path)
    return None


def start_run(config: FinetuneConfig, args: Any, resume_from: str | None) -> None:
    """Save the run's settings for `--resume`; when resuming, find the best checkpoint in the output folder
    as it is now (the main process writes both before any process reads them)."""
    with args.main_process_first(local=False, desc="saving the run's settings"):
        if args.process_index == 0:
            if resume_from is not None:
                repoint_best_checkpoint(Path(resume_from) / TRAINER_STATE_NAME, config.output_dir)
            save_run_config(config)


def clear_previous_run(config: FinetuneConfig, args: Any) -> None:
    """Delete the previous run that `overwrite` replaces (`prepare_output_dir` checked it holds nothing else).

    Called once the data, the model and the device are known to be usable, so a run that cannot
    start leaves the old one in place. Under a launcher every process has got this far before the main
    process deletes, and the others wait until it has.
    """
    out = Path(config.output_dir)
    if not (config.overwrite and out.is_dir()):
        return
    if args.world_size > 1:  # every process has checked its data, model and device before anything goes
        torch.distributed.barrier()
    with args.main_process_first(local=False, desc="clearing the previous run"):
        if args.process_index == 0 and out.is_dir():
            shutil.rmtree(out)


_CHECKPOINT = rf"{PREFIX_CHECKPOINT_DIR}-(\d+)"  # the Trainer's checkpoint folders, by optimizer step
# the run's settings, written as it starts (`save_run_config`), and their temporary file
_SETTINGS = re.compile(rf"{re.escape(RUN_CONFIG)}|{temporary_pattern(RUN_CONFIG)}")
# what a run writes, and what an interrupted one leaves: final/'s staging and set-aside copies, metrics' temporary
# file (an older edgeqa's name for it too), the settings
_RUN_FILE = re.compile(
    rf"{_CHECKPOINT}|{FINAL}|{FINAL}\.partial|\.{FINAL}\.old|{re.escape(METRICS)}(\.tmp)?|{temporary_pattern(METRICS)}"
    rf"|{_SETTINGS.pattern}|runs|README\.md"
)


def _is_run_file(name: str) -> bool:
    """Whether a name in a run folder is one `finetune` (or the Trainer) writes."""
    return _RUN_FILE.fullmatch(name) is not None


def resolve_precision(config: FinetuneConfig) -> tuple[bool, bool, bool]:
    """(use_cpu, bf16, tf32) for this machine."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise ConfigError("--device cuda, but no CUDA device is visible; use --device auto or cpu")
    use_cpu = config.device == "cpu" or not cuda
    bf16_ok = not use_cpu and torch.cuda.is_bf16_supported()
    if config.precision == "bf16" and not bf16_ok:
        raise ConfigError("--precision bf16 needs a CUDA device that supports bf16; use --precision fp32")
    bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_ok and config.recipe != "tutorial")
    tf32 = not use_cpu and torch.cuda.get_device_capability()[0] >= 8 and config.recipe != "tutorial"
    return use_cpu, bf16, tf32


def load_model(config: FinetuneConfig) -> tuple[Any, Any]:
    problem = tie_problem(config.model) if Path(config.model).is_dir() else None
    if problem:  # trained on, the model would differ between transformers versions
        raise ModelError(f"{problem}; then fine-tune it")
    with model_load_errors(config.model, OFFLINE_ADVICE):
        model_config = AutoConfig.from_pretrained(config.model)
        check_model_type(model_config.model_type, config.model)
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
        loader = model_class(model_config) or AutoModelForSeq2SeqLM  # FLAN-T5's own lm_head under transformers 5
        model = loader.from_pretrained(config.model, config=model_config)
    one_embedding_module(model)
    return model, tokenizer


def finetune(
    config: FinetuneConfig,
    callbacks: list | None = None,
    trainer_overrides: dict[str, Any] | None = None,
    progress_bars: bool = False,
) -> FinetuneResult:
    """Fine-tune, evaluate ROUGE and exact match each epoch, keep the best checkpoint and save it as `final/`.

    Progress is logged as one line per evaluation (step, loss, exact match, ROUGE-L).

    Args:
        config: The run.
        callbacks: Extra `transformers.TrainerCallback`s.
        trainer_overrides: `Seq2SeqTrainingArguments` fields set over edgeqa's choices
            (the GPU benchmark uses it to run the original tutorial's settings, the demo to
            evaluate every few hundred steps).
        progress_bars: Also show transformers' and datasets' progress bars (and the Trainer's
            printed log dictionaries).
    """
    import datasets
    from transformers.utils import logging as transformers_logging

    # datasets' map bars, and transformers 5's bars for loading and writing weights
    bars_were_on = datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    if not progress_bars:
        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()
    try:
        with accelerate_environment_kept():
            return _finetune(config, callbacks, trainer_overrides, progress_bars)
    finally:
        if not progress_bars and bars_were_on[0]:
            datasets.enable_progress_bars()
        if not progress_bars and bars_were_on[1]:
            transformers_logging.enable_progress_bar()


def _finetune(
    config: FinetuneConfig, callbacks: list | None, trainer_overrides: dict[str, Any] | None, progress_bars: bool
) -> FinetuneResult:
    resume_from = prepare_output_dir(config)
    use_cpu, bf16, tf32 = resolve_precision(config)
    raw = load_raw(config)
    train_split, eval_split = prepare_splits(raw, config)
    # Training arguments before the model: under DeepSpeed ZeRO-3 they make from_pretrained load it sharded.
    args = training_arguments(
        config, use_cpu, bf16, tf32, {"disable_tqdm": not progress_bars} | (trainer_overrides or {})
    )
    model, tokenizer = load_model(config)
    train_set = tokenize(train_split, tokenizer, config)
    eval_set = tokenize(eval_split, tokenizer, config)
    clear_previous_run(config, args)
    start_run(config, args, resume_from)
    args.generation_config = evaluation_generation(model, config)
    epoch_eval_set = eval_set
    if config.eval_subset and config.eval_subset < len(eval_set):
        epoch_eval_set = eval_set.shuffle(seed=config.seed).select(range(config.eval_subset))
    history = MetricsHistory(config.output_dir / METRICS)
    answer_lengths = [len(ids) for ids in train_set["labels"]] if config.grouping == "answer" else None
    collator = DataCollatorForSeq2Seq(
        tokenizer, model=model, label_pad_token_id=-100, pad_to_multiple_of=config.pad_to_multiple_of
    )
    trainer = EdgeQATrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=epoch_eval_set,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=RougeMetrics(tokenizer),
        callbacks=[history, ProgressLog(), *(callbacks or [])],
        answer_lengths=answer_lengths,
    )
    if not progress_bars:
        trainer.remove_callback(PrinterCallback)  # it prints every log dictionary to stdout
    trainer.train(resume_from_checkpoint=resume_from)
    if epoch_eval_set is not eval_set:  # the best model (chosen on the subset) on the whole validation set
        history.validation = "full"
        trainer.evaluate(eval_dataset=eval_set)
    final_dir = config.output_dir / FINAL
    save_final(trainer, tokenizer, config, eval_split, final_dir)
    return FinetuneResult(
        final_dir,
        trainer.state.global_step,
        history.load(),
        trainer.state.best_model_checkpoint,
        trainer.is_world_process_zero(),
        saved_step(trainer.state),
    )


def saved_step(state: Any) -> int:
    """The optimizer step of the model `final/` holds: the best checkpoint's, which the Trainer loads at the
    end, else the last step."""
    best = re.fullmatch(_CHECKPOINT, Path(state.best_model_checkpoint or "").name)
    return int(best.group(1)) if best else state.global_step


def evaluation_generation(model: Any, config: FinetuneConfig) -> GenerationConfig:
    """How evaluation generates answers: up to `eval_max_new_tokens` tokens, with `eval_num_beams` beams."""
    generation = GenerationConfig.from_model_config(model.config)
    # The answer length as max_length (a T5 answer starts from one decoder token): transformers 5's
    # Seq2SeqTrainer sets max_length's default on the model after the first batch, and `generate`
    # would then warn on every batch that max_new_tokens and max_length are both set.
    generation.max_length = config.eval_max_new_tokens + 1
    generation.max_new_tokens = None
    generation.num_beams = config.eval_num_beams
    return generation


def save_final(trainer: Any, tokenizer: Any, config: FinetuneConfig, eval_split: Any, final_dir: Path) -> None:
    """Write the best model with its tokenizer, training config and held-out questions, atomically.

    Every process calls this: under FSDP, gathering the weights is a collective; the main process writes.
    """
    staging = final_dir.with_name(final_dir.name + ".partial")
    if trainer.is_world_process_zero():  # what an interrupted save left
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_fsdp_enabled:  # Trainer.save_model writes nothing for sharded FSDP state dicts
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
        if trainer.is_world_process_zero():
            trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(staging), state_dict=state_dict)
    else:
        trainer.save_model(str(staging))
    if not trainer.is_world_process_zero():
        return
    tokenizer.save_pretrained(str(staging))
    make_portable(staging)
    training_record(config, saved_step(trainer.state)).write(staging)
    with open(staging / HELDOUT, "w", encoding="utf-8") as f:
        for row in eval_split.select(range(min(MAX_HELDOUT, len(eval_split)))):
            record = heldout_record(row, config, tokenizer)
            if record is not None:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    replace_folder(staging, final_dir)  # never deleted in place: a kill mid-delete would leave half a model
    logger.info("saved the best model to %s", final_dir)


def training_record(config: FinetuneConfig, global_step: int) -> TrainingRecord:
    """What export needs to know about the run, with the whole config for the record."""
    return TrainingRecord(
        model=config.model,
        prompt_template=config.prompt_template,
        context_template=config.context_template,
        no_answer=config.no_answer,
        max_source_tokens=config.max_source_tokens,
        max_target_tokens=config.max_target_tokens,
        eval_max_new_tokens=config.eval_max_new_tokens,
        eval_num_beams=config.eval_num_beams,
        global_step=global_step,
        config=config.to_dict(),
    )


class RougeMetrics:
    """`compute_metrics` for generated predictions: ROUGE-1/2/L/Lsum, exact match (both in percent)
    and mean generated length."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, eval_prediction: Any) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        pad = self.tokenizer.pad_token_id
        predictions = np.where(predictions < 0, pad, predictions)
        labels = np.where(labels < 0, pad, labels)
        decoded = self.tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = self.tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = {key: round(value * 100, 4) for key, value in rouge(decoded, references).items()}
        scores["exact_match"] = round(exact_match(decoded, references) * 100, 4)
        lengths = [int(np.count_nonzero((row != pad) & (row != self.tokenizer.eos_token_id))) for row in predictions]
        scores["gen_len"] = float(np.mean(lengths)) if lengths else 0.0
        return scores


class MetricsHistory(TrainerCallback):
    """Appends each evaluation's metrics to `metrics.json` (kept across resumed runs)."""

    def __init__(self, path: Path):
        self.path = path
        self.validation = ""  # "full" tags the final whole-validation-set evaluation after an eval_subset run

    def load(self) -> list[dict[str, Any]]:
        if self.path.is_file():
            return json.loads(self.path.read_text(encoding="utf-8"))
        return []

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any):
        if not state.is_world_process_zero or not metrics:
            return
        key = (state.global_step, self.validation or None)
        entries: list[dict[str, Any]] = [e for e in self.load() if (e.get("step"), e.get("validation")) != key]
        entry: dict[str, Any] = {"epoch": round(state.epoch or 0, 2), "step": state.global_step}
        if self.validation:
            entry["validation"] = self.validation
        entries.append(entry | metrics)
        write_atomic(self.path, json.dumps(entries, indent=2) + "\n")


class ProgressLog(TrainerCallback):
    """One log line per evaluation: the learning curve (exact match and ROUGE-L on the validation split)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.loss: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.started = time.perf_counter()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.loss = logs["loss"]

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any):
        if not state.is_world_process_zero or not metrics:
            return
        width = len(str(state.max_steps))
        loss = f"loss {self.loss:.3f}, " if self.loss is not None else ""
        logger.info(
            "step %*d/%d %5.0f s: %sexact match %5.1f%%, ROUGE-L %5.1f",
            width,
            state.global_step,
            state.max_steps,
            time.perf_counter() - self.started,
            loss,
            metrics.get("eval_exact_match", 0.0),
            metrics.get("eval_rougeL", 0.0),
        )


def metrics_table(history: list[dict[str, float]]) -> str:
    """A Markdown table of exact match, ROUGE and generated length per evaluation."""
    keys = [
        "eval_exact_match",
        "eval_rouge1",
        "eval_rouge2",
        "eval_rougeL",
        "eval_rougeLsum",
        "eval_gen_len",
        "eval_loss",
    ]
    header = "| epoch | step | " + " | ".join(k.removeprefix("eval_") for k in keys) + " |"
    rows = [header, "|" + " --- |" * (len(keys) + 2)]
    for entry in history:
        values = " | ".join(f"{entry[k]:.2f}" if k in entry else "-" for k in keys)
        epoch = f"{entry.get('epoch', 0):.2f}" + (" (full validation)" if entry.get("validation") == "full" else "")
        rows.append(f"| {epoch} | {entry.get('step', 0)} | {values} |")
    return "\n".join(rows)
