"""Where edgeqa's reading time goes: onnxruntime's node profile, and what padding a mixed batch costs.

    python benchmarks/results/reading_profile.py --shape base --threads 1
    python benchmarks/results/reading_profile.py --shape small --threads 2 --rounds 6

On the reading benchmark's artifact (`python -m edgeqa.bench.reading` builds it in the cache) and its
4 prompts of about 416 tokens:

1. The encoder run and decoder steps at batch 4 with onnxruntime's profiler on: time per operator type,
   the decoder steps with the full cross-attention length and with the last 16 prompt tokens only
   (what the cross-attention over 420 positions adds per step).
2. The encoder alone (no profiler) on 1 full passage and 3 short ones (about 116 tokens): in one batch
   (padded to the longest, as `Decoder.join` encodes a batch), and by length (two encoder runs),
   against the 4 full passages; the variants alternate round by round.
3. The whole read with and without the answers' scores (`Row.scored`), alternating.

Not part of the package: it reads the runtime's graphs directly (like decoder_paired.py) to record the
figures in results/reading.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeqa.bench.reading import reader_artifact, reading_prompts
from edgeqa.bench.shapes import prepare
from edgeqa.runtime import GenerationOptions, QAModel, Row
from edgeqa.runtime.decoder import pad_prompts


def profiled_model(artifact: Path, threads: int, prefix: str) -> QAModel:
    """The artifact loaded with onnxruntime's profiler on in both sessions."""
    import edgeqa.runtime.graphs as graphs

    plain = ort.SessionOptions

    class Profiled(plain):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.enable_profiling = True
            self.profile_file_prefix = prefix

    graphs.ort.SessionOptions = Profiled
    try:
        return QAModel.load(artifact, threads=threads)
    finally:
        graphs.ort.SessionOptions = plain


def node_profile(artifact: Path, prompts: list[list[int]], threads: int, rounds: int) -> dict[str, list]:
    with tempfile.TemporaryDirectory() as tmp:
        model = profiled_model(artifact, threads, f"{tmp}/reading")
        graphs = model.graphs
        steps = 8
        for _ in range(rounds):
            state = graphs.encode(*pad_prompts(prompts, 0))
            tokens = np.zeros(len(prompts), dtype=np.int64)
            for _ in range(steps):
                tokens = graphs.step(state, tokens).argmax(-1)
        for _ in range(rounds):  # the same steps reading 16 positions
            state = graphs.encode(*pad_prompts([p[-16:] for p in prompts], 0))
            tokens = np.zeros(len(prompts), dtype=np.int64)
            for _ in range(steps):
                tokens = graphs.step(state, tokens).argmax(-1)
        encoder = Path(graphs.encoder.end_profiling())
        decoder = Path(graphs.decoder.end_profiling())
        return {
            "encoder, 4 x ~416 tokens": by_operator_slice(encoder, 0, rounds),
            "decoder step, cross-attention over ~416 positions": by_operator_slice(decoder, 0, rounds * steps),
            "decoder step, cross-attention over 16 positions": by_operator_slice(
                decoder, rounds * steps, rounds * steps
            ),
        }


def by_operator_slice(profile: Path, first: int, runs: int) -> list[tuple[str, float]]:
    """ms per operator type per run, over runs first .. first + runs - 1 (the first one warms up: skipped)."""
    events = json.loads(profile.read_text())
    totals: list[collections.Counter] = [collections.Counter()]
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[-1][event["args"]["op_name"]] += event["dur"] / 1000
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            totals.append(collections.Counter())
    picked = totals[first + 1 : first + runs]
    summed: collections.Counter = collections.Counter()
    for counter in picked:
        summed.update(counter)
    return [(op, ms / len(picked)) for op, ms in summed.most_common()]


def padding(artifact: Path, full: list[list[int]], short: list[list[int]], threads: int, rounds: int) -> dict:
    model = QAModel.load(artifact, threads=threads)
    options = GenerationOptions(max_new_tokens=1)

    def encode(batches: list[list[list[int]]]) -> float:
        started = time.perf_counter()
        for batch in batches:
            model.decoder().join([Row(list(ids), options) for ids in batch])
        return (time.perf_counter() - started) * 1000

    cases = {
        "4 full passages (the benchmark's batch)": [full],
        "1 full + 3 short, one batch (padded to the longest)": [[full[0], *short]],
        "1 full + 3 short, by length (two encoder runs)": [[full[0]], short],
    }
    for batches in cases.values():
        encode(batches)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, batches in cases.items():
            times[name].append(encode(batches))
    return {name: statistics.median(values) for name, values in times.items()}


def scoring(artifact: Path, prompts: list[list[int]], threads: int, rounds: int) -> dict[str, float]:
    """The whole read (16 tokens) with and without `Row.scored`, alternating: median ms of each."""
    model = QAModel.load(artifact, threads=threads)
    options = GenerationOptions(max_new_tokens=16, min_new_tokens=16)

    def read(scored: bool) -> float:
        decoder = model.decoder()
        started = time.perf_counter()
        decoder.join([Row(list(ids), options, scored=scored) for ids in prompts])
        decoder.run()
        return (time.perf_counter() - started) * 1000

    read(True), read(False)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for scored in (False, True):
            times[scored].append(read(scored))
    return {"not scored": statistics.median(times[False]), "scored": statistics.median(times[True])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="base", choices=("small", "base"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeqa-bench-cache")
    args = parser.parse_args()
    int8 = prepare(args.shape, args.cache, ctranslate2=False, optimum=False)["int8"]
    artifact = reader_artifact(int8, int8.parent / f"{int8.name}-reader", 512)
    full, _ = reading_prompts(artifact / "tokenizer.json", 4, 400)
    short, _ = reading_prompts(artifact / "tokenizer.json", 3, 100)
    print(f"{args.shape}, {args.threads} thread(s); prompts {[len(p) for p in full]}, short {[len(p) for p in short]}")
    for name, ops in node_profile(artifact, full, args.threads, args.rounds).items():
        total = sum(ms for _, ms in ops)
        print(f"\n{name}: {total:.1f} ms in operators per run")
        for op, ms in ops[:8]:
            print(f"  {op:30s} {ms:9.2f} ms  {ms / total:6.1%}")
    print("\nencoder alone (median of the rounds):")
    for name, ms in padding(artifact, full, short, args.threads, args.rounds).items():
        print(f"  {name}: {ms:.0f} ms")
    print("\nthe whole read, 16 tokens (median of the rounds):")
    for name, ms in scoring(artifact, full, args.threads, args.rounds).items():
        print(f"  {name}: {ms:.0f} ms")


if __name__ == "__main__":
    main()
