"""Fine-tuning throughput: the original tutorial's recipe, edgeqa's, and the opt-in speed settings.

The tutorial trained in fp32 with plain batches; edgeqa trains in bf16 where the GPU supports it,
with TF32 matrix products and prompt-length-grouped batches, and does not wait for the GPU after
every step to check the loss for NaN. The ladder goes from one to the other a change at a time, then
on through the opt-in settings (answer-length batches, padding to multiples, a bigger batch with the
learning rate scaled, a per-epoch validation subset, torch.compile), each fine-tuning the same
seeded FLAN-T5-shaped model on the bundled sample for the same number of steps. samples/s counts
the optimizer steps after a warm-up, evaluation excluded; evaluation seconds are reported apart, and
so is the share of padding in the training batches (the same on any device).

    python -m edgeqa.bench.finetune_speed --shape base --steps 300 --output results/
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from edgeqa.errors import ConfigError
from edgeqa.finetune import FinetuneConfig, finetune
from edgeqa.finetune.models import FLAN_T5_SHAPES, build_random_t5
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
# edgeqa's opt-in speed settings on top of its defaults, cumulative; not yet measured on a GPU.
ANSWER = {"length_grouping": "answer"}
PADDED = ANSWER | {"pad_to_multiple_of": 32}
BATCH_32 = PADDED | {"batch_size": 32, "lr_scaling": "sqrt"}
EVAL_SUBSET = BATCH_32 | {"eval_subset": 8, "eval_batch_size": 64}
OPT_IN: list[Setting] = [
    ("+ answer-length batches", ANSWER, {}),
    ("+ padding to multiples of 32", PADDED, {}),
    ("+ batch 32, lr x2 (sqrt scaling)", BATCH_32, {}),
    ("+ validation subset of 8 each epoch, eval batch 64", EVAL_SUBSET, {}),
    ("+ torch.compile", EVAL_SUBSET | {"torch_compile": True}, {}),
]
SETTINGS: list[Setting] = LADDER + OPT_IN


@dataclass(frozen=True)
class SpeedResult:
    setting: str
    batch_size: int
    samples_per_second: float
    timed_steps: int
    seconds: float
    eval_seconds: float
    answer_padding: float
    prompt_padding: float
    peak_memory_gib: float
    last_loss: float | None


class StepClock(TrainerCallback):
    """Wall time from the end of the warm-up step to the end of the last step."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps
        self.start: float | None = None
        self.end = 0.0
        self.steps = 0
        self.last_loss: float | None = None

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
    result = finetune(config, callbacks=[clock, padding], trainer_overrides=overrides)
    if clock.start is None or clock.steps == 0:
        raise SystemExit(f"{setting}: fewer than {warmup_steps + 1} steps ran; raise --steps")
    seconds = clock.end - clock.start
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    eval_seconds = sum(entry.get("eval_runtime", 0.0) for entry in result.history)
    return SpeedResult(
        setting,
        config.batch_size,
        config.batch_size * clock.steps / seconds,
        clock.steps,
        seconds,
        eval_seconds,
        padding.answer,
        padding.prompt,
        peak,
        clock.last_loss,
    )


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()})"


def markdown(results: list[SpeedResult], shape: str, steps: int) -> str:
    baseline = results[0].samples_per_second
    lines = [
        f"Fine-tuning a {shape}-shaped FLAN-T5 on {device_name()}, {steps} steps, torch {torch.__version__}.",
        "",
        "| setting | batch | samples/s | vs first | eval s | answer padding | prompt padding "
        "| peak GPU memory GiB | last logged loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        loss = f"{r.last_loss:.3f}" if r.last_loss is not None else "-"
        lines.append(
            f"| {r.setting} | {r.batch_size} | {r.samples_per_second:.1f} | {r.samples_per_second / baseline:.2f}x | "
            f"{r.eval_seconds:.1f} | {r.answer_padding:.0%} | {r.prompt_padding:.0%} | {r.peak_memory_gib:.1f} "
            f"| {loss} |"
        )
    return "\n".join(lines) + "\n"


def run(
    shape: str,
    steps: int,
    warmup_steps: int,
    output: Path,
    model: Path | None = None,
    settings: list[Setting] | None = None,
) -> list[SpeedResult]:
    """Fine-tune with each setting in turn (default `SETTINGS`); rewrite `finetune-speed.{md,json}` after each."""
    output.mkdir(parents=True, exist_ok=True)
    name = shape if model is None else str(model)
    with tempfile.TemporaryDirectory(prefix="edgeqa-finetune-speed-") as tmp:
        checkpoint = model or build_random_t5(Path(tmp) / "model", **FLAN_T5_SHAPES[shape])
        config = FinetuneConfig(
            model=str(checkpoint),
            data=str(BUNDLED_QA),
            max_steps=steps,
            max_eval_samples=16,
            eval_max_new_tokens=32,
            logging_steps=max(1, steps // 10),
            save_total_limit=1,
        )
        results: list[SpeedResult] = []
        for number, (setting, fields, overrides) in enumerate(settings or SETTINGS):
            run_config = replace(config, output_dir=Path(tmp) / f"run-{number}", **fields)
            results.append(measure(setting, run_config, warmup_steps, overrides))
            report = markdown(results, name, steps)
            (output / "finetune-speed.md").write_text(report, encoding="utf-8")
            record = {"device": device_name(), "model": name, "steps": steps, "results": [asdict(r) for r in results]}
            (output / "finetune-speed.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
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
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per setting")
    parser.add_argument("--warmup-steps", type=int, default=20, help="steps left out of the timing")
    parser.add_argument("--output", type=Path, default=Path("bench-results"), help="results folder")
    parser.add_argument(
        "--setting",
        type=parse_setting,
        action="append",
        help="measure these instead of the default ladder: NAME|CONFIG_JSON[|TRAINER_JSON] (repeatable)",
    )
    args = parser.parse_args(argv)
    run(args.shape, args.steps, args.warmup_steps, args.output, args.model, args.setting)


if __name__ == "__main__":
    main()
