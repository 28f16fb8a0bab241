"""`FinetuneConfig`: every setting of a fine-tuning run, validated once, loadable from TOML."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edgeqa.checkpoint import TOKEN_AND_BEAM_LIMITS, checkpoint_location
from edgeqa.errors import ConfigError
from edgeqa.prompt import (
    CONTEXT_TEMPLATE,
    DEFAULT_MAX_ANSWER_TOKENS,
    DEFAULT_MAX_INPUT_TOKENS,
    NO_ANSWER,
    PROMPT_TEMPLATE,
    check_context_template,
    check_count,
    check_no_answer,
    check_template,
)
from edgeqa.typed_json import check_types, whole_number

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
RECIPES = ("edgeqa", "tutorial")
LENGTH_GROUPINGS = ("auto", "none", "prompt", "answer")
LR_SCALINGS = ("none", "sqrt", "linear")
# The batch `learning_rate` is meant for when `lr_scaling` is on: the tutorial's (one device, batch 8).
REFERENCE_BATCH = 8


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run. Defaults are the original tutorial's hyper-parameters.

    The speed settings after `recipe` are opt-in: they cut padding, compile time and evaluation
    time, but none has been measured on a GPU yet (`python -m edgeqa.bench.finetune_speed`), so
    the defaults stay those measured on an H100 (benchmarks/results/finetune-speed-h100.md).

    Attributes:
        model: T5 checkpoint name on the hub or a local folder.
        data: Hub dataset name, or a local JSONL/JSON/CSV/Parquet file or a folder with
            train/validation/test files.
        output_dir: Run folder: checkpoints, metrics.json and `final/`.
        tokenizer: Tokenizer name or folder; default: the model's.
        question_column: Column holding the question.
        answer_column: Column holding the answer.
        context_column: Column holding a passage each answer is read from (unset: questions alone).
            Records with an empty passage are trained as questions alone.
        prompt_template: Prompt with one `{question}` field; saved for export and runtime.
        context_template: Prompt with one `{context}` and one `{question}` field, for records with a
            passage; saved for export and runtime (FLAN's reading template by default).
        no_answer: The answer of records whose passage does not answer their question (FLAN's
            "unanswerable" by default), given to records with a passage and an empty answer; saved, so
            that a reader of several passages passes over it.
        max_source_tokens: Prompt tokens kept (truncation).
        max_target_tokens: Answer tokens kept (truncation).
        validation_fraction: Share held out when the data has no validation split.
        seed: Seed of the split, the initialisation and the data order.
        max_train_samples: Use only this many training records (smoke runs).
        max_eval_samples: Use only this many validation records.
        learning_rate: AdamW learning rate.
        batch_size: Training batch size per device.
        eval_batch_size: Evaluation batch size per device.
        weight_decay: AdamW weight decay.
        epochs: Training epochs.
        max_steps: Stop after this many optimizer steps (unset: run all epochs).
        save_total_limit: Checkpoints kept (the best one is always kept).
        eval_max_new_tokens: Answer length when generating for ROUGE at each evaluation.
        eval_num_beams: Beams when generating for ROUGE.
        device: auto (CUDA when present), cpu or cuda.
        precision: auto (bf16 on CUDA devices that support it, else fp32), fp32 or bf16.
            Never fp16: T5's feed-forward outputs overflow it.
        logging_steps: Steps between loss logs.
        resume: Continue from the last complete checkpoint in the output folder.
        overwrite: Delete a previous run in the output folder first.
        recipe: edgeqa (bf16 where supported, TF32, batches grouped by prompt length, no per-step
            loss check) or tutorial (the original tutorial's fp32 run: no TF32, plain batches,
            transformers' per-step NaN/inf loss check). It decides what precision auto and
            length_grouping auto mean.
        length_grouping: Batch records of similar length: auto (the recipe's), none, prompt
            (transformers' group_by_length, prompt tokens) or answer (answer tokens, where most
            padding is: answers run to max_target_tokens, prompts to max_source_tokens).
        pad_to_multiple_of: Pad prompts and answers to a multiple of this many tokens, so that a
            compiled model sees a bounded set of shapes (unset: pad to the longest in the batch).
        torch_compile: Compile the model with torch.compile (pair with a padding multiple).
        lr_scaling: Scale learning_rate from a global batch of 8 (the tutorial's) to the run's
            (batch_size x processes): none, sqrt or linear.
        eval_subset: Validation records generated for ROUGE at each epoch: a fixed, seeded subset;
            the full validation set is evaluated once at the end (unset: the full set each epoch).
    """

    model: str = "google/flan-t5-base"
    data: str = "yahoo_answers_qa"
    output_dir: Path = Path("edgeqa-run")
    tokenizer: str | None = None
    question_column: str = "question"
    answer_column: str = "answer"
    context_column: str | None = None
    prompt_template: str = PROMPT_TEMPLATE
    context_template: str = CONTEXT_TEMPLATE
    no_answer: str = NO_ANSWER
    max_source_tokens: int = DEFAULT_MAX_INPUT_TOKENS
    max_target_tokens: int = DEFAULT_MAX_ANSWER_TOKENS
    validation_fraction: float = 0.3
    seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    learning_rate: float = 3e-4
    batch_size: int = 8
    eval_batch_size: int = 8
    weight_decay: float = 0.01
    epochs: float = 3.0
    max_steps: int | None = None
    save_total_limit: int = 3
    eval_max_new_tokens: int = 256
    eval_num_beams: int = 1
    device: str = "auto"
    precision: str = "auto"
    logging_steps: int = 50
    resume: bool = False
    overwrite: bool = False
    recipe: str = "edgeqa"
    length_grouping: str = "auto"
    pad_to_multiple_of: int | None = None
    torch_compile: bool = False
    lr_scaling: str = "none"
    eval_subset: int | None = None

    def __post_init__(self) -> None:
        check_types(self, ConfigError)
        check_template(self.prompt_template)
        check_context_template(self.context_template)
        check_no_answer(self.no_answer)
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)} (fp16 overflows in T5)"
            )
        for name, allowed in (
            ("recipe", RECIPES),
            ("length_grouping", LENGTH_GROUPINGS),
            ("lr_scaling", LR_SCALINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be between 0 and 1, got {self.validation_fraction}")
        # what the artifact will carry: bounded as the runtime reads it back
        for name, most in TOKEN_AND_BEAM_LIMITS.items():
            check_count(name, getattr(self, name), most)
        for name in ("batch_size", "eval_batch_size", "save_total_limit", "logging_steps"):
            whole_number(getattr(self, name), name, 1, error=ConfigError)
        for name in ("max_train_samples", "max_eval_samples", "max_steps", "pad_to_multiple_of", "eval_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 when set, got {value}")
        for name in ("learning_rate", "epochs", "weight_decay"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("learning_rate", "epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if not 0 <= self.seed < 2**32:  # what torch and numpy seed with
            raise ConfigError(f"seed must be from 0 to 2**32 - 1, got {self.seed}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pick one")
        # `~` is the home folder wherever the shell left it (a TOML file, quotes); hub names never start with one
        object.__setattr__(self, "model", checkpoint_location(self.model))
        if self.tokenizer is not None:
            object.__setattr__(self, "tokenizer", checkpoint_location(self.tokenizer))
        object.__setattr__(self, "data", os.path.expanduser(self.data))
        object.__setattr__(self, "output_dir", Path(self.output_dir).expanduser())

    @property
    def grouping(self) -> str:
        """length_grouping with auto resolved by the recipe: none, prompt or answer."""
        if self.length_grouping != "auto":
            return self.length_grouping
        return "none" if self.recipe == "tutorial" else "prompt"

    def learning_rate_for(self, processes: int) -> float:
        """learning_rate scaled by lr_scaling to a global batch of batch_size x processes."""
        ratio = self.batch_size * processes / REFERENCE_BATCH
        return self.learning_rate * {"none": 1.0, "sqrt": ratio**0.5, "linear": ratio}[self.lr_scaling]

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_toml(cls, path: Path) -> FinetuneConfig:
        """Load a config file; an unknown key is an error that lists the valid ones."""
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(unknown)} in {path}; valid: {', '.join(sorted(known))}"
            )
        return cls(**values)
