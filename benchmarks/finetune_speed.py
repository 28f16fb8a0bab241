"""Fine-tuning throughput: the original tutorial's recipe, edgeqa's, and the opt-in speed settings.

The tutorial trained in fp32 with plain batches; edgeqa trains in bf16 where the GPU supports it,
with TF32 matrix products and prompt-length-grouped batches, and does not wait for the GPU after
every step to check the loss for NaN. The ladder goes from one to the other a change at a time, then
on through the opt-in settings (answer-length batches, padding to multiples, bigger batches with the
learning rate scaled, a per-epoch validation subset, torch.compile), each fine-tuning the same
seeded FLAN-T5-shaped model on the bundled sample.

By default each setting trains the same number of epochs (equal samples, whatever the batch) and
evaluates ROUGE each epoch, as `edgeqa finetune` does. Reported per setting:
- end-to-end samples/s: samples trained over the whole run's wall time (loading, training, every
  evaluation, checkpoints), against the tutorial's recipe and against edgeqa's defaults;
- ROUGE-L of the kept model on the whole validation sample, against the tutorial's;
- training samples/s: the optimizer steps after a warm-up, evaluation excluded;
- the share of padding in the training batches (the same on any device) and peak GPU memory.
A setting that runs end to end at least `--min-speedup` times edgeqa's defaults with ROUGE-L no more
than `--rouge-tolerance` points below the tutorial's is marked a candidate default.
`--steps N` instead trains N steps per setting (training throughput; equal steps, not samples).

    python -m edgeqa.bench.finetune_speed --shape base --epochs 2 --output results/
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import TrainerCallback

from edgeqa.errors import ConfigError
from edgeqa.finetune import FinetuneConfig, finetune
from edgeqa.finetune.models import FLAN_T5_SHAPES, build_random_t5
from edgeqa.logs import setup_logging
from edgeqa.records import BUNDLED_QA

# transformers' default: check each step's loss for NaN/inf, which waits for the GPU every step.
SYNC = {"logging_nan_inf_filter": True}
# A setting: (name, FinetuneConfig fields, Seq2SeqTrainingArguments set over edgeqa's choices).
Setting = tuple[str, dict[str, Any], dict[str, Any]]
# From the original tutorial's recipe to edgeqa's defaults, one change at a time (measured on an H100).
LADDER: list[Setting] = [
    ("tutorial recipe: fp32, no TF32, plain batches", {"recipe": "tutorial"}, {}),
    ("+ TF32", {"precision": "fp32", "length_grouping": "none"}, SYNC),
    ("+ prompt-length batches", {"precision": "fp32"}, SYNC),
    ("+ bf16", {}, SYNC),
    ("+ no per-step loss check = edgeqa defaults", {}, {}),
]
DEFAULTS = LADDER[-1][0]
# edgeqa's opt-in speed settings on top of its defaults, cumulative; not yet measured on a GPU.
ANSWER = {"length_grouping": "answer"}
PADDED = ANSWER | {"pad_to_multiple_of": 32}
BATCH_32 = PADDED | {"batch_size": 32, "lr_scaling": "sqrt"}
BATCH_64 = PADDED | {"batch_size": 64, "lr_scaling": "sqrt"}
EVAL_SUBSET = BATCH_64 | {"eval_subset": 8, "eval_batch_size": 64}
OPT_IN: list[Setting] = [
    ("+ answer-length batches", ANSWER, {}),
    ("+ padding to multiples of 32", PADDED, {}),
    ("+ batch 32, lr x2 (sqrt scaling)", BATCH_32, {}),
    ("+ batch 64, lr x2.8 (sqrt scaling)", BATCH_64, {}),
    ("+ validation subset of 8 each epoch, eval batch 64", EVAL_SUBSET, {}),
    ("+ torch.compile", EVAL_SUBSET | {"torch_compile": True}, {}),
]
SETTINGS: list[Setting] = LADDER + OPT_IN


@dataclass(frozen=True)
class SpeedResult:
    setting: str
    batch_size: int
    samples: int  # trained, in all
    end_to_end_seconds: float  # the whole run: loading, training, every evaluation, checkpoints
    samples_per_second: float  # training only: the steps after the warm-up
    timed_steps: int
    seconds: float
    eval_seconds: float
    rouge_l: float | None  # the kept model on the whole validation sample, in points
    exact_match: float | None
    answer_padding: float
    prompt_padding: float
    peak_memory_gib: float
    last_loss: float | None

    @property
    def end_to_end_samples_per_second(self) -> float:
        return self.samples / self.end_to_end_seconds


class StepClock(TrainerCallback):
    """Wall time from the end of the warm-up step to the end of the last step.

    The warm-up is at most half the run's steps, so a large batch over a few epochs is still timed.
    """

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps
        self.start: float | None = None
        self.end = 0.0
        self.steps = 0
        self.last_loss: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.warmup_steps = min(self.warmup_steps, state.max_steps // 2)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if state.global_step == self.warmup_steps:
            self.start = now
        elif self.start is not None:
            self.end, self.steps = now, state.global_step - self.warmup_steps

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])


def kept_model_scores(history: Sequence[dict[str, Any]]) -> tuple[float | None, float | None]:
    """ROUGE-L and exact match of the checkpoint the run kept, on the whole validation sample.

    After a per-epoch validation subset that is the final evaluation marked "full"; otherwise the
    best epoch by ROUGE-L, which is the checkpoint kept.
    """
    scored = [e for e in history if "eval_rougeL" in e]
    full = [e for e in scored if e.get("validation") == "full"]
    if not scored:
        return None, None
    kept = full[-1] if full else max(scored, key=lambda e: e["eval_rougeL"])
    return float(kept["eval_rougeL"]), float(kept.get("eval_exact_match", 0.0))


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


def measure(setting: str, config: FinetuneConfig, warmup_steps: int, overrides: dict[str, Any]) -> SpeedResult:
    clock, padding = StepClock(warmup_steps), PaddingGauge()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    result = finetune(config, callbacks=[clock, padding], trainer_overrides=overrides)
    end_to_end = time.perf_counter() - began
    if clock.start is None or clock.steps == 0:
        raise SystemExit(f"{setting}: fewer than {warmup_steps + 1} steps ran; raise --steps or --epochs")
    seconds = clock.end - clock.start
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    eval_seconds = sum(entry.get("eval_runtime", 0.0) for entry in result.history)
    rouge_l, exact = kept_model_scores(result.history)
    return SpeedResult(
        setting,
        config.batch_size,
        result.global_step * config.batch_size,
        end_to_end,
        config.batch_size * clock.steps / seconds,
        clock.steps,
        seconds,
        eval_seconds,
        rouge_l,
        exact,
        padding.answer,
        padding.prompt,
        peak,
        clock.last_loss,
    )


@dataclass(frozen=True)
class Verdict:
    """One setting against the tutorial's recipe (the first result) and edgeqa's defaults."""

    result: SpeedResult
    vs_first: float  # end-to-end samples/s ratio
    vs_defaults: float | None
    rouge_delta: float | None  # ROUGE-L points against the first result
    candidate: bool  # fast enough over the defaults, at equal ROUGE: a candidate default


def verdicts(results: Sequence[SpeedResult], min_speedup: float, rouge_tolerance: float) -> list[Verdict]:
    """Rank each setting end to end: ratios, the ROUGE-L change, and whether it should become a default."""
    first = results[0]
    defaults = next((r for r in results if r.setting == DEFAULTS), None)
    out = []
    for r in results:
        speed = r.end_to_end_samples_per_second
        vs_defaults = speed / defaults.end_to_end_samples_per_second if defaults else None
        delta = r.rouge_l - first.rouge_l if r.rouge_l is not None and first.rouge_l is not None else None
        equal_rouge = delta is not None and delta >= -rouge_tolerance
        candidate = vs_defaults is not None and vs_defaults >= min_speedup and equal_rouge
        out.append(Verdict(r, speed / first.end_to_end_samples_per_second, vs_defaults, delta, candidate))
    return out


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()})"


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def markdown(
    results: list[SpeedResult], shape: str, plan: str, min_speedup: float = 1.3, rouge_tolerance: float = 1.0
) -> str:
    ranked = verdicts(results, min_speedup, rouge_tolerance)
    lines = [
        f"Fine-tuning a {shape}-shaped FLAN-T5 on {device_name()}, {plan}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}.",
        "",
        f"End to end: samples trained over the whole run (loading, training, every evaluation, checkpoints). "
        f"Candidate default: at least {min_speedup}x edgeqa's defaults end to end with ROUGE-L at most "
        f"{rouge_tolerance} points below the first setting's.",
        "",
        "| setting | batch | end-to-end samples/s | vs first | vs edgeqa defaults | ROUGE-L | change "
        "| exact match % | candidate default | training samples/s | eval s | answer padding | prompt padding "
        "| peak GPU memory GiB | last logged loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in ranked:
        r = v.result
        lines.append(
            f"| {r.setting} | {r.batch_size} | {r.end_to_end_samples_per_second:.1f} | {v.vs_first:.2f}x "
            f"| {_number(v.vs_defaults, '.2f')}{'x' if v.vs_defaults is not None else ''} "
            f"| {_number(r.rouge_l, '.1f')} | {_number(v.rouge_delta, '+.1f')} | {_number(r.exact_match, '.1f')} "
            f"| {'yes' if v.candidate else 'no'} | {r.samples_per_second:.1f} | {r.eval_seconds:.1f} "
            f"| {r.answer_padding:.0%} | {r.prompt_padding:.0%} | {r.peak_memory_gib:.1f} "
            f"| {_number(r.last_loss, '.3f')} |"
        )
    equal = [v for v in ranked if v.rouge_delta is not None and v.rouge_delta >= -rouge_tolerance]
    if equal:
        best = max(equal, key=lambda v: v.vs_first)
        fastest = f"Fastest at equal ROUGE-L: {best.result.setting}, {best.vs_first:.2f}x the first setting end to end."
        lines += ["", fastest]
    return "\n".join(lines) + "\n"


def run(
    shape: str,
    output: Path,
    epochs: float = 2.0,
    steps: int | None = None,
    warmup_steps: int = 20,
    model: Path | None = None,
    settings: list[Setting] | None = None,
    train_samples: int | None = 768,
    eval_samples: int = 64,
    eval_max_new_tokens: int = 64,
    min_speedup: float = 1.3,
    rouge_tolerance: float = 1.0,
) -> list[SpeedResult]:
    """Fine-tune with each setting in turn (default `SETTINGS`); rewrite `finetune-speed.{md,json}` after each.

    `epochs` per setting, or `steps` when given; `train_samples` and `eval_samples` cap the bundled
    sample's splits (None: all of it).
    """
    output.mkdir(parents=True, exist_ok=True)
    name = shape if model is None else str(model)
    plan = f"{steps} steps" if steps else f"{epochs:g} epochs of {train_samples or 'all'} samples"
    plan += f", {eval_samples} validation answers of up to {eval_max_new_tokens} tokens"
    with tempfile.TemporaryDirectory(prefix="edgeqa-finetune-speed-") as tmp:
        checkpoint = model or build_random_t5(Path(tmp) / "model", **FLAN_T5_SHAPES[shape])
        config = FinetuneConfig(
            model=str(checkpoint),
            data=str(BUNDLED_QA),
            epochs=epochs,
            max_steps=steps,
            max_train_samples=train_samples,
            max_eval_samples=eval_samples,
            eval_max_new_tokens=eval_max_new_tokens,
            logging_steps=max(1, (steps or 100) // 10),
            save_total_limit=1,
        )
        results: list[SpeedResult] = []
        for number, (setting, fields, overrides) in enumerate(settings or SETTINGS):
            run_config = replace(config, output_dir=Path(tmp) / f"run-{number}", **fields)
            results.append(measure(setting, run_config, warmup_steps, overrides))
            shutil.rmtree(run_config.output_dir)  # a base model's checkpoints are gigabytes each
            report = markdown(results, name, plan, min_speedup, rouge_tolerance)
            (output / "finetune-speed.md").write_text(report, encoding="utf-8")
            record = {
                "device": device_name(),
                "model": name,
                "plan": plan,
                "steps": steps,
                "epochs": None if steps else epochs,
                "results": [
                    asdict(r) | {"end_to_end_samples_per_second": r.end_to_end_samples_per_second} for r in results
                ],
            }
            (output / "finetune-speed.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            print(f"{setting}: {results[-1].end_to_end_samples_per_second:.1f} samples/s end to end", flush=True)
    print(report)
    return results


def parse_setting(text: str) -> Setting:
    """`NAME|CONFIG_JSON[|TRAINER_JSON]`: FinetuneConfig fields, then Seq2SeqTrainingArguments overrides.

    e.g. `answer batches|{"length_grouping": "answer"}` or `no pin|{}|{"dataloader_pin_memory": false}`.
    """
    try:
        name, fields, *overrides = text.split("|", 2)
        parsed = json.loads(fields), json.loads(overrides[0]) if overrides else {}
        FinetuneConfig(**parsed[0])
    except (ValueError, TypeError, ConfigError) as e:
        raise argparse.ArgumentTypeError(f"expected NAME|CONFIG_JSON[|TRAINER_JSON] ({e}), got {text!r}") from e
    return name, *parsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(FLAN_T5_SHAPES), default="base", help="random FLAN-T5 shape")
    parser.add_argument("--model", type=Path, help="fine-tune this checkpoint folder instead of a random shape")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs per setting (equal samples)")
    parser.add_argument("--steps", type=int, help="optimizer steps per setting instead of --epochs")
    parser.add_argument("--warmup-steps", type=int, default=20, help="steps left out of the training timing")
    parser.add_argument("--train-samples", type=int, default=768, help="training records used (0: all 2,998)")
    parser.add_argument("--eval-samples", type=int, default=64, help="validation records evaluated")
    parser.add_argument("--eval-max-new-tokens", type=int, default=64, help="answer tokens generated in evaluation")
    parser.add_argument("--min-speedup", type=float, default=1.3, help="over edgeqa's defaults, for a candidate")
    parser.add_argument("--rouge-tolerance", type=float, default=1.0, help="ROUGE-L points a candidate may lose")
    parser.add_argument("--output", type=Path, default=Path("bench-results"), help="results folder")
    parser.add_argument(
        "--setting",
        type=parse_setting,
        action="append",
        help="measure these instead of the default ladder: NAME|CONFIG_JSON[|TRAINER_JSON] (repeatable)",
    )
    args = parser.parse_args(argv)
    setup_logging(libraries=True)  # edgeqa's log: one line per evaluation, library noise filtered
    transformers.utils.logging.disable_progress_bar()  # the random model's "Writing model shards"
    run(
        args.shape,
        args.output,
        epochs=args.epochs,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        model=args.model,
        settings=args.setting,
        train_samples=args.train_samples or None,
        eval_samples=args.eval_samples,
        eval_max_new_tokens=args.eval_max_new_tokens,
        min_speedup=args.min_speedup,
        rouge_tolerance=args.rouge_tolerance,
    )


if __name__ == "__main__":
    main()
