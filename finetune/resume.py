"""Resuming a run: its settings saved at the start, reused and checked on `--resume`, its best checkpoint
found again wherever the run folder now is (stdlib only: the CLI builds the config with it)."""

from __future__ import annotations

import json
import logging
import os
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from edgeqa.atomic import write_atomic
from edgeqa.errors import ConfigError
from edgeqa.finetune.config import FinetuneConfig

logger = logging.getLogger(__name__)

#: The resolved `FinetuneConfig` of the run, in its output folder.
RUN_CONFIG = "edgeqa_run.json"
# What a resumed run cannot change: the data, its splits and order, the model, the optimizer's settings
# (its saved state would silently keep the old ones). Epochs, steps, evaluation, logging, device may change.
FIXED = (
    "model",
    "tokenizer",
    "data",
    "question_column",
    "answer_column",
    "context_column",
    "prompt_template",
    "context_template",
    "no_answer",
    "max_source_tokens",
    "max_target_tokens",
    "validation_fraction",
    "seed",
    "max_train_samples",
    "max_eval_samples",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "lr_scaling",
    "recipe",
    "length_grouping",
)
# Local files and folders: saved absolute, so that a run resumes from any working folder.
_LOCATIONS = ("model", "tokenizer", "data")
# Given by each command, never taken from the saved run.
_PER_COMMAND = ("output_dir", "resume", "overwrite")


def save_run_config(config: FinetuneConfig) -> None:
    """Write the run's settings to `OUTPUT/edgeqa_run.json`, atomically."""
    values = config.to_dict()
    for name in _LOCATIONS:
        if values[name] is not None and os.path.exists(values[name]):
            values[name] = os.path.abspath(values[name])
    for name in _PER_COMMAND:
        values.pop(name)
    write_atomic(Path(config.output_dir) / RUN_CONFIG, json.dumps(values, indent=2, ensure_ascii=False) + "\n")


def saved_run_config(output_dir: Path) -> dict[str, Any] | None:
    """The settings `save_run_config` wrote in `output_dir`, or None for a run from before edgeqa saved them.

    Raises:
        ConfigError: the file does not read, or holds settings this edgeqa does not know.
    """
    path = Path(output_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the run's settings {path} ({e}); start a new run with --overwrite") from e
    known = {f.name for f in fields(FinetuneConfig)}
    if not isinstance(values, dict) or set(values) - known:
        unknown = sorted(set(values) - known) if isinstance(values, dict) else ["(not a JSON object)"]
        raise ConfigError(
            f"the run's settings {path} hold unknown key(s) {', '.join(unknown)}; resume it with the edgeqa "
            "that started it"
        )
    return {name: value for name, value in values.items() if name not in _PER_COMMAND}


def command_config(toml: Path | None, given: dict[str, Any]) -> FinetuneConfig:
    """The config of an `edgeqa finetune` command: with `--resume`, the run's saved settings with only the
    options given (flags, then a `--config` file's keys) over them; otherwise the defaults with those over them.

    Args:
        toml: A `--config` file.
        given: The fields given on the command line.
    """
    from_file = _toml_fields(toml) if toml else {}
    overrides = from_file | given
    base = FinetuneConfig(**from_file) if toml else FinetuneConfig()
    if overrides.get("resume"):
        saved = saved_run_config(overrides.get("output_dir", base.output_dir))
        if saved is not None:
            return FinetuneConfig(**(saved | overrides))
    return replace(base, **given)


def _toml_fields(path: Path) -> dict[str, Any]:
    """The fields a TOML config file sets (validated), without the defaults of those it leaves out."""
    config = FinetuneConfig.from_toml(path)
    keys = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    return {name: getattr(config, name) for name in keys}


def check_unchanged(config: FinetuneConfig) -> None:
    """Refuse to resume with settings that shape training other than the run's saved ones.

    Raises:
        ConfigError: naming each changed option with its old and new value.
    """
    saved = saved_run_config(config.output_dir)
    if saved is None:  # a run from before edgeqa saved its settings: nothing to compare with
        return
    now = config.to_dict()
    changed = [
        f"--{name.replace('_', '-')} {saved[name]!r} (now {now[name]!r})"
        for name in FIXED
        if name in saved and not _same(name, saved[name], now[name])
    ]
    if changed:
        raise ConfigError(
            f"--resume: {config.output_dir} was trained with other settings: {', '.join(changed)}; resume with the "
            "run's own (leave those options out), or start a new run with another --output, or --overwrite"
        )


def _same(name: str, old: Any, new: Any) -> bool:
    """Whether a saved setting and the new one are the same; a local path that no longer exists may have
    moved, and then the one given now is taken."""
    if old == new:
        return True
    if name in _LOCATIONS and isinstance(old, str) and isinstance(new, str) and os.path.exists(new):
        return not os.path.exists(old) or os.path.samefile(old, new)
    return False


def repoint_best_checkpoint(state_file: Path, output_dir: Path) -> None:
    """Make the best checkpoint that `state_file` (a checkpoint's `trainer_state.json`) records the one of
    the same step in `output_dir`, atomically.

    The Trainer records it as `OUTPUT/checkpoint-N` with OUTPUT as the first run was given it: wrong from
    another working folder or once the run folder moved, and then the final model is the last step's (or
    another run's best) while its record names the best step. A best checkpoint no longer in `output_dir`
    is dropped, so that `final/` and its record agree.
    """
    state = json.loads(Path(state_file).read_text(encoding="utf-8"))
    best = state.get("best_model_checkpoint")
    if not best:
        return
    here = os.path.join(str(output_dir), Path(best).name)  # as the Trainer names the checkpoints it saves
    found = here if os.path.isdir(here) else None
    if found == best:
        return
    if found is None:  # forgotten with its metric: the resumed run's own evaluations choose the best again
        logger.warning("the best checkpoint %s is gone from %s: the best is chosen again from here", best, output_dir)
        state["best_metric"] = state["best_global_step"] = None
    state["best_model_checkpoint"] = found
    write_atomic(Path(state_file), json.dumps(state, indent=2, sort_keys=True) + "\n")
