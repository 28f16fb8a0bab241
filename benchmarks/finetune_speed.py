"""Fine-tuning throughput: the original tutorial's settings against edgeqa's defaults, in one process.

The tutorial trained in fp32 with plain batches; edgeqa trains in bf16 where the GPU supports it,
with TF32 matrix products and length-grouped batches (less padding), and does not wait for the GPU
after every step to check the loss for NaN. The runs go from one to the
other a change at a time, each fine-tuning the same seeded FLAN-T5-shaped model on the bundled sample
for the same number of steps; samples/s counts the optimizer steps after a warm-up, evaluation excluded.

    python -m edgeqa.bench.finetune_speed --shape base --steps 300 --output results/
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from edgeqa.finetune import FinetuneConfig, finetune
from edgeqa.finetune.models import FLAN_T5_SHAPES, build_random_t5
from edgeqa.records import BUNDLED_QA

# transformers' default: check each step's loss for NaN/inf, which waits for the GPU every step.
SYNC = {"logging_nan_inf_filter": True}
# From the original tutorial's settings to edgeqa's defaults, one change at a time:
# (name, FinetuneConfig.precision, Seq2SeqTrainingArguments set over edgeqa's choices).
SETTINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("tutorial: fp32, no TF32, plain batches", "fp32", {"tf32": False, "group_by_length": False, **SYNC}),
    ("+ TF32", "fp32", {"group_by_length": False, **SYNC}),
    ("+ length-grouped batches", "fp32", SYNC),
    ("+ bf16", "auto", SYNC),
    ("+ no per-step loss check = edgeqa defaults", "auto", {}),
]


@dataclass(frozen=True)
class SpeedResult:
    setting: str
    samples_per_second: float
    timed_steps: int
    seconds: float
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


def measure(setting: str, config: FinetuneConfig, warmup_steps: int, overrides: dict[str, Any]) -> SpeedResult:
    clock = StepClock(warmup_steps)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    finetune(config, callbacks=[clock], trainer_overrides=overrides)
    if clock.start is None or clock.steps == 0:
        raise SystemExit(f"{setting}: fewer than {warmup_steps + 1} steps ran; raise --steps")
    seconds = clock.end - clock.start
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return SpeedResult(setting, config.batch_size * clock.steps / seconds, clock.steps, seconds, peak, clock.last_loss)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()})"


def markdown(results: list[SpeedResult], shape: str, steps: int, batch_size: int) -> str:
    baseline = results[0].samples_per_second
    lines = [
        f"Fine-tuning a {shape}-shaped FLAN-T5 on {device_name()}, batch {batch_size}, {steps} steps, "
        f"torch {torch.__version__}.",
        "",
        "| setting | samples/s | vs tutorial | timed steps | peak GPU memory GiB | last logged loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        loss = f"{r.last_loss:.3f}" if r.last_loss is not None else "-"
        lines.append(
            f"| {r.setting} | {r.samples_per_second:.1f} | {r.samples_per_second / baseline:.2f}x | "
            f"{r.timed_steps} | {r.peak_memory_gib:.1f} | {loss} |"
        )
    return "\n".join(lines) + "\n"


def run(
    shape: str,
    steps: int,
    warmup_steps: int,
    output: Path,
    model: Path | None = None,
    settings: list[tuple[str, str, dict[str, Any]]] | None = None,
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
        for number, (setting, precision, overrides) in enumerate(settings or SETTINGS):
            run_config = replace(config, output_dir=Path(tmp) / f"run-{number}", precision=precision)
            results.append(measure(setting, run_config, warmup_steps, overrides))
            report = markdown(results, name, steps, config.batch_size)
            (output / "finetune-speed.md").write_text(report, encoding="utf-8")
            record = {"device": device_name(), "model": name, "steps": steps, "results": [asdict(r) for r in results]}
            (output / "finetune-speed.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(report)
    return results


def parse_setting(text: str) -> tuple[str, str, dict[str, Any]]:
    """`NAME|PRECISION|JSON` of Seq2SeqTrainingArguments overrides, e.g. `compiled|auto|{"torch_compile": true}`."""
    try:
        name, precision, overrides = text.split("|", 2)
        return name, precision, json.loads(overrides)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected NAME|PRECISION|JSON, got {text!r}") from e


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
        help="measure these instead of the default ladder: NAME|PRECISION|JSON overrides (repeatable)",
    )
    args = parser.parse_args(argv)
    run(args.shape, args.steps, args.warmup_steps, args.output, args.model, args.setting)


if __name__ == "__main__":
    main()
