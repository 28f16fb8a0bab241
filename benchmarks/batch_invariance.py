"""Batch invariance and its price: int8 per-token against per-tensor, int4 with and without even rows.

    python -m edgeqa.bench.batch_invariance                  # small shape
    python -m edgeqa.bench.batch_invariance --shape base --questions 48

On the benchmark's random FLAN-T5-shaped model (near-ties everywhere, so any batch dependence
shows), each artifact answers the same questions (exactly 24 new tokens) one by one and in batches
of 8: the share of identical answers, and the batch-1 latency and batch-8 throughput, all
artifacts loaded in this one process and alternated round by round (median of the rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from edgeqa.runtime import GenerationOptions, QAModel

OPTIONS = GenerationOptions(max_new_tokens=24, min_new_tokens=24)


def variants(shape: str, cache: Path) -> dict[str, tuple[Path, bool]]:
    """Name -> (artifact, even rows) for the shape, built once into the benchmark's cache."""
    from edgeqa.bench.levers import variant
    from edgeqa.bench.shapes import prepare
    from edgeqa.export.config import settings_for

    paths = prepare(shape, cache, ctranslate2=False, optimum=False)
    int4 = variant(paths["fp32"], cache / shape / "int4-bench", settings_for("auto", method="int4"))
    return {
        "int8 per-tensor": (paths["int8-per-tensor"], False),
        "int8 per-token": (paths["int8"], False),
        "int4, odd rows as they come": (int4, False),
        "int4, even rows": (int4, True),
    }


def measure(models: dict[str, QAModel], even: dict[str, bool], questions: list[str], rounds: int) -> dict:
    agreement = {}
    for name, model in models.items():
        model.even_rows = even[name]
        batched = [a.tokens for a in model.answer_batch(questions, OPTIONS, batch_size=8)]
        alone = [model.answer_batch([q], OPTIONS, batch_size=1)[0].tokens for q in questions]
        agreement[name] = sum(a == b for a, b in zip(batched, alone, strict=True)) / len(questions)
    b1: dict[str, list[float]] = {name: [] for name in models}
    b8: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            model.even_rows = even[name]
            started = time.perf_counter()
            for question in questions[:16]:
                model.answer_batch([question], OPTIONS, batch_size=1)
            b1[name].append((time.perf_counter() - started) * 1000 / 16)
            started = time.perf_counter()
            model.answer_batch(questions[:32], OPTIONS, batch_size=8)
            b8[name].append(32 / (time.perf_counter() - started))
    return {
        name: dict(agreement=agreement[name], b1_ms=statistics.median(b1[name]), b8_qps=statistics.median(b8[name]))
        for name in models
    }


def main(argv: list[str] | None = None) -> None:
    import tempfile

    from edgeqa.records import sample_data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=("small", "base"))
    parser.add_argument("--questions", type=int, default=100, help="questions for the agreement (at least 32)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeqa-bench-cache")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in sample_data("validation").read_text(encoding="utf-8").splitlines()]
    questions = [r["question"] for r in rows][: max(args.questions, 32)]
    built = variants(args.shape, args.cache)
    models = {name: QAModel.load(path) for name, (path, _) in built.items()}
    results = measure(models, {name: even for name, (_, even) in built.items()}, questions, args.rounds)
    base_b1, base_b8 = results["int8 per-tensor"]["b1_ms"], results["int8 per-tensor"]["b8_qps"]
    print(f"{args.shape}, {len(questions)} questions, 24 new tokens, median of {args.rounds} rounds\n")
    print("| artifact | b8 answers = b1 | b1 ms | b1 vs int8 per-tensor | b8 q/s | b8 vs int8 per-tensor |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['agreement'] * 100:.0f}% | {r['b1_ms']:.1f} | {r['b1_ms'] / base_b1:.2f}x | "
            f"{r['b8_qps']:.1f} | {r['b8_qps'] / base_b8:.2f}x |"
        )


if __name__ == "__main__":
    main()
