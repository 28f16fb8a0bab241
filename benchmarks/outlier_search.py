"""The outlier table: plain int8 against the export's search on models with T5's activation outliers.

    python -m edgeqa.bench.outlier_search                    # the facts model, scales 0/32/128/512
    python -m edgeqa.bench.outlier_search --quantize int4 --scales 0,512
    python -m edgeqa.bench.outlier_search --shape small --scales 512 --modes none,auto --force-search

A facts model (the demo's shape, trained here in about a minute) gets outliers planted by
function-preserving rescalings (`edgeqa.bench.outliers`); each model is exported with
`--fallback none` (plain), `smooth`, `float` and `auto` (the default), through the parity gate
on the same 200 held-out questions. Batch-1 latency of every artifact is measured in this one
process, artifacts alternating, every answer exactly 16 tokens long, and given as a ratio to the
plain artifact of the same model. `--shape small` plants the outliers into a flan-t5-small-shaped
model with seeded random weights instead (untrained: for the export's cost, not its accuracy);
its answers are noise on both sides, so the plain gate passes, and `--force-search` counts the
first gate run of each search as failed, which makes the export smooth and gate again (cost only).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from edgeqa.bench.outliers import OutlierPlan, save_with_outliers, train_facts_model

MODES = ("none", "smooth", "float", "auto")
LABELS = {"none": "plain", "smooth": "smoothed", "float": "fallback", "auto": "final (auto)"}


def export_all(
    checkpoint: Path, folder: Path, quantize: str, modes: tuple[str, ...], force_search: bool = False
) -> dict[str, dict]:
    """Each mode's artifact, parity figures and export time."""
    from edgeqa.export import ExportConfig, export_artifact

    rows = {}
    for mode in modes:
        config = ExportConfig(
            checkpoint=str(checkpoint),
            output=folder / mode,
            quantize=quantize,
            fallback=mode,
            parity_samples=200,
            parity_max_new_tokens=16,
            allow_parity_failure=True,
            force=True,
        )
        started = time.perf_counter()
        with _first_gate_run_fails() if force_search and mode != "none" else nullcontext():
            result = export_artifact(config)
        assert result.parity is not None
        rows[mode] = dict(
            path=folder / mode,
            parity=result.parity,
            seconds=time.perf_counter() - started,
            bytes=result.manifest.total_bytes,
            outliers=result.manifest.quantization.outliers if result.manifest.quantization else None,
        )
    return rows


@contextmanager
def _first_gate_run_fails() -> Iterator[None]:
    """Within the block, the first gate run counts as failed (for measuring what the search costs)."""
    from dataclasses import replace

    from edgeqa.export.parity import ParityCheck

    run = ParityCheck.run
    calls = []

    def failing_once(self, artifact, indices=None, split="all"):
        record = run(self, artifact, indices, split)
        calls.append(split)
        return replace(record, passed=False) if len(calls) == 1 else record

    ParityCheck.run = failing_once  # type: ignore[method-assign]
    try:
        yield
    finally:
        ParityCheck.run = run  # type: ignore[method-assign]


def batch1_ms(paths: list[Path], questions: list[str], rounds: int = 5) -> list[float]:
    """Median ms per question (16 new tokens each) at batch 1 of each artifact, alternating each round."""
    from edgeqa.runtime import QAModel

    models = [QAModel.load(path) for path in paths]
    for model in models:
        model.answer(questions[0])
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, series in zip(models, times, strict=True):
            started = time.perf_counter()
            for question in questions:
                model.answer(question, max_new_tokens=16, min_new_tokens=16)
            series.append((time.perf_counter() - started) * 1000 / len(questions))
    return [statistics.median(series) for series in times]


def table(
    results: dict[int, dict[str, dict]], fp32_bytes: int, latency: dict[int, list[float]], modes: tuple[str, ...]
) -> str:
    lines = [
        "| outlier scale | export | gate questions | ROUGE-L Δ | exact match Δ | identical | gate | "
        "size / fp32 | batch-1 latency / plain | export time / plain | what the search did |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scale, rows in results.items():
        for mode, ms in zip(modes, latency[scale], strict=True):
            row, plain = rows[mode], rows["none"]
            p = row["parity"]
            did = row["outliers"].summary() if row["outliers"] else "-"
            lines.append(
                f"| {scale} | {LABELS[mode]} | {p.split} ({p.samples}) | {p.rouge_l_delta * 100:+.1f} | "
                f"{(p.artifact_exact_match - p.reference_exact_match) * 100:+.1f} | {p.identical_answers * 100:.0f}% | "
                f"{'pass' if p.passed else 'FAIL'} | {row['bytes'] / fp32_bytes:.2f} | "
                f"{ms / latency[scale][0]:.2f}x | {row['seconds'] / plain['seconds']:.2f}x | {did} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="0,32,128,512", help="planted outlier scales (0: none)")
    parser.add_argument("--quantize", default="int8", choices=("int8", "int4"))
    parser.add_argument("--shape", default="facts", choices=("facts", "small"))
    parser.add_argument("--modes", default=",".join(MODES), help="--fallback modes, none first")
    parser.add_argument("--force-search", action="store_true", help="fail each search's first gate run")
    parser.add_argument("--work", type=Path, default=None, help="folder for the models (default: a temporary one)")
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    logging.basicConfig(level=logging.WARNING)
    from edgeqa.export import ExportConfig, export_artifact
    from edgeqa.records import read_records, sample_data

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.shape == "small":
            from edgeqa.finetune.models import FLAN_T5_SHAPES, build_random_t5

            trained = work / "small"
            if not (trained / "config.json").exists():
                build_random_t5(trained, **FLAN_T5_SHAPES["small"])
            held_out = sample_data("validation")
        else:
            trained = work / "facts-run" / "final"
            if not (trained / "config.json").exists():
                train_facts_model(work / "facts-run")
            held_out = trained / "edgeqa_heldout.jsonl"
        fp32 = export_artifact(ExportConfig(checkpoint=str(trained), output=work / "fp32", parity=False, force=True))
        questions = [r.question for r in read_records(held_out)[:32]]
        results, latency = {}, {}
        for scale in (int(s) for s in args.scales.split(",")):
            checkpoint = save_with_outliers(trained, work / f"outliers-{scale}", OutlierPlan(max(scale, 1)))
            results[scale] = export_all(
                checkpoint, work / f"{args.quantize}-{scale}", args.quantize, modes, args.force_search
            )
            latency[scale] = batch1_ms([results[scale][mode]["path"] for mode in modes], questions)
        print(table(results, fp32.manifest.total_bytes, latency, modes))


if __name__ == "__main__":
    main()
