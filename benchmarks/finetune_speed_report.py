"""The fine-tuning benchmark's verdicts and report: each setting end to end against the first and
edgeqa's defaults, at equal ROUGE-L (`finetune_speed.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import transformers

from edgeqa.bench.machine import cpu_name

if TYPE_CHECKING:
    from edgeqa.bench.finetune_speed import SpeedResult


@dataclass(frozen=True)
class Verdict:
    """One setting against the first (the tutorial's recipe) and edgeqa's defaults."""

    result: SpeedResult
    vs_first: float  # end-to-end samples/s ratio
    vs_defaults: float | None
    rouge_delta: float | None  # ROUGE-L points against the first setting
    equal_rouge: bool  # ROUGE-L at most the tolerance below the first setting's
    candidate: bool  # at least the minimum speed-up over the defaults, at equal ROUGE-L: a candidate default


def verdicts(results: Sequence[SpeedResult], min_speedup: float, rouge_tolerance: float) -> list[Verdict]:
    """Rank each setting end to end: ratios, the ROUGE-L change, and whether it should become a default."""
    first = results[0]
    defaults = next((r for r in results if r.edgeqa_defaults), None)
    out = []
    for r in results:
        speed = r.end_to_end_samples_per_second
        vs_defaults = speed / defaults.end_to_end_samples_per_second if defaults else None
        delta = r.rouge_l - first.rouge_l if r.rouge_l is not None and first.rouge_l is not None else None
        equal = delta is not None and delta >= -rouge_tolerance
        candidate = equal and vs_defaults is not None and vs_defaults >= min_speedup and not r.edgeqa_defaults
        out.append(Verdict(r, speed / first.end_to_end_samples_per_second, vs_defaults, delta, equal, candidate))
    return out


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({cpu_name()})"


def _number(value: float | None, pattern: str, unit: str = "") -> str:
    return "-" if value is None else format(value, pattern) + unit


def markdown(
    results: list[SpeedResult], model: str, plan: str, min_speedup: float = 1.3, rouge_tolerance: float = 1.0
) -> str:
    """The results table, the rule for candidate defaults and the fastest setting at equal ROUGE-L."""
    ranked = verdicts(results, min_speedup, rouge_tolerance)
    lines = [
        f"Fine-tuning {model} on {device_name()}, {plan}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}.",
        "",
        "End to end: samples trained over `Trainer.train`'s wall time (training, every per-epoch evaluation, "
        "the checkpoints) plus a final whole-sample evaluation where a setting evaluates a subset each epoch; "
        "loading, data preparation and the final save are the `other s` column. ROUGE-L: the kept checkpoint on "
        "every validation record, scored apart, the same way for every setting. Candidate default: at least "
        f"{min_speedup}x edgeqa's defaults end to end with ROUGE-L at most {rouge_tolerance} points below the first "
        "setting's.",
        "",
        "| setting | batch | end-to-end samples/s | vs first | vs edgeqa defaults | ROUGE-L | change "
        "| exact match % | candidate default | training samples/s | eval s | other s | answer padding "
        "| prompt padding | peak GPU memory GiB | last logged loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in ranked:
        r = v.result
        lines.append(
            f"| {r.setting} | {r.batch_size} | {r.end_to_end_samples_per_second:.1f} | {v.vs_first:.2f}x "
            f"| {_number(v.vs_defaults, '.2f', 'x')} | {_number(r.rouge_l, '.1f')} | {_number(v.rouge_delta, '+.1f')} "
            f"| {_number(r.exact_match, '.1f')} | {'yes' if v.candidate else 'no'} | {r.samples_per_second:.1f} "
            f"| {r.eval_seconds:.1f} | {r.other_seconds:.1f} | {r.answer_padding:.0%} | {r.prompt_padding:.0%} "
            f"| {r.peak_memory_gib:.1f} | {_number(r.last_loss, '.3f')} |"
        )
    equal = [v for v in ranked if v.equal_rouge]
    if equal:
        best = max(equal, key=lambda v: v.vs_first)
        fastest = f"Fastest at equal ROUGE-L: {best.result.setting}, {best.vs_first:.2f}x the first setting end to end."
        lines += ["", fastest]
    return "\n".join(lines) + "\n"
