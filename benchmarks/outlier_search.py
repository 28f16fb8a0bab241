"""The outlier table: plain int8 against the export's search on models with T5's activation outliers.

    python -m edgeqa.bench.outlier_search                    # the facts model, scales 0/32/128/512
    python -m edgeqa.bench.outlier_search --quantize int4 --scales 0,512

A facts model (the demo's shape, trained here in about a minute) gets outliers planted by
function-preserving rescalings (`edgeqa.bench.outliers`); each model is exported with
`--fallback none` (plain), `smooth`, `float` and `auto` (the default), through the parity gate
on the same 200 held-out questions. Batch-1 latency of every artifact is measured in this one
process, artifacts alternating, and given as a ratio to the plain artifact of the same model.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from edgeqa.bench.outliers import OutlierPlan, save_with_outliers, train_facts_model

MODES = ("none", "smooth", "float", "auto")
LABELS = {"none": "plain", "smooth": "smoothed", "float": "fallback", "auto": "final (auto)"}


def export_all(checkpoint: Path, folder: Path, quantize: str) -> dict[str, dict]:
    """Each mode's artifact, parity figures and export time."""
    from edgeqa.export import ExportConfig, export_artifact

    rows = {}
    for mode in MODES:
        started = time.perf_counter()
        result = export_artifact(
            ExportConfig(
                checkpoint=str(checkpoint),
                output=folder / mode,
                quantize=quantize,
                fallback=mode,
                parity_samples=200,
                parity_max_new_tokens=16,
                allow_parity_failure=True,
                force=True,
            )
        )
        assert result.parity is not None
        rows[mode] = dict(
            path=folder / mode,
            parity=result.parity,
            seconds=time.perf_counter() - started,
            bytes=result.manifest.total_bytes,
            outliers=result.manifest.quantization.outliers if result.manifest.quantization else None,
        )
    return rows


def batch1_ms(paths: list[Path], questions: list[str], rounds: int = 3) -> list[float]:
    """Median ms per question at batch 1 of each artifact, the artifacts alternating each round."""
    from edgeqa.runtime import QAModel

    models = [QAModel.load(path) for path in paths]
    for model in models:
        model.answer(questions[0])
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, series in zip(models, times, strict=True):
            started = time.perf_counter()
            for question in questions:
                model.answer(question)
            series.append((time.perf_counter() - started) * 1000 / len(questions))
    return [statistics.median(series) for series in times]


def table(results: dict[int, dict[str, dict]], fp32_bytes: int, latency: dict[int, list[float]]) -> str:
    lines = [
        "| outlier scale | export | gate questions | ROUGE-L Δ | exact match Δ | identical | gate | "
        "size / fp32 | batch-1 latency / plain | export time / plain | what the search did |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scale, rows in results.items():
        for mode, ms in zip(MODES, latency[scale], strict=True):
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
    parser.add_argument("--work", type=Path, default=None, help="folder for the models (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from edgeqa.export import ExportConfig, export_artifact
    from edgeqa.records import read_records

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        trained = work / "facts-run" / "final"
        if not (trained / "config.json").exists():
            train_facts_model(work / "facts-run")
        fp32 = export_artifact(ExportConfig(checkpoint=str(trained), output=work / "fp32", parity=False, force=True))
        questions = [r.question for r in read_records(trained / "edgeqa_heldout.jsonl")[:32]]
        results, latency = {}, {}
        for scale in (int(s) for s in args.scales.split(",")):
            checkpoint = save_with_outliers(trained, work / f"outliers-{scale}", OutlierPlan(max(scale, 1)))
            results[scale] = export_all(checkpoint, work / f"{args.quantize}-{scale}", args.quantize)
            latency[scale] = batch1_ms([results[scale][mode]["path"] for mode in MODES], questions)
        print(table(results, fp32.manifest.total_bytes, latency))


if __name__ == "__main__":
    main()
