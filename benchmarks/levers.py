"""One lever at a time: variants of the int8 artifact and of the session, each measured by the
benchmark's worker in its own process, in one run, as ratios to the baseline.

    python -m edgeqa.bench.levers --shape small --output bench-results/levers.md
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import onnx

from edgeqa.bench.run import BenchConfig, merge_rounds, prompts, run_worker
from edgeqa.bench.shapes import export_fingerprint, prepare
from edgeqa.export.config import QuantizeSettings, settings_for
from edgeqa.export.layout import EMBEDDING_FILE, GRAPHS, graph_entries, save_graphs, weights_file
from edgeqa.export.quantize import quantize_graph
from edgeqa.manifest import Manifest, file_entry


def variant(fp32: Path, target: Path, settings: QuantizeSettings, weights_beside: bool = True) -> Path:
    """The fp32 artifact's graphs quantized with other settings, as a complete artifact.

    Args:
        weights_beside: Weights in GRAPH.onnx.data and embedding.data as `edgeqa export` writes
            them; False keeps each graph's weights inside its file (the embedding then twice).
    """
    if (target / "manifest.json").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    manifest = Manifest.read(fp32)
    graph_files = {name for graph in GRAPHS.values() for name in (graph, weights_file(graph))} | {EMBEDDING_FILE}
    shared = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = {role: Path(tmp) / name for role, name in GRAPHS.items()}
        for role, name in GRAPHS.items():
            quantize_graph(fp32 / name, sources[role], settings, role)
        if weights_beside:
            shared = save_graphs(sources, {role: target / name for role, name in GRAPHS.items()})
        else:
            for role, name in GRAPHS.items():
                onnx.save_model(onnx.load(str(sources[role])), str(target / name))
    files = graph_entries(target)
    for role, entry in manifest.files.items():
        if entry.path not in graph_files:
            shutil.copy2(fp32 / entry.path, target / entry.path)
            files[role] = file_entry(target, entry.path)
    replace(manifest, files=files, quantization=settings.record(), shared_tensors=shared).write(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--output", type=Path, default=Path("bench-results/levers.md"))
    args = parser.parse_args()
    config = BenchConfig(shapes=(args.shape,), rounds=args.rounds, inputs=args.inputs)
    paths = prepare(args.shape, config.cache, ctranslate2=False, optimum=False)
    base = settings_for("auto")
    root = config.cache / args.shape / f"levers-{export_fingerprint()}"
    artifacts = {
        "baseline: int8 per-channel, MatMul + Gather, weights in .data, embedding shared, 2 threads": (
            paths["int8"],
            None,
            None,
        ),
        "weights inside the graph files (embedding in both)": (
            variant(paths["fp32"], root / "weights-inside", base, weights_beside=False),
            None,
            None,
        ),
        "per-tensor weights": (
            variant(paths["fp32"], root / "per-tensor", replace(base, per_channel=False)),
            None,
            None,
        ),
        "7-bit weights (reduce_range)": (
            variant(paths["fp32"], root / "reduce-range", replace(base, reduce_range=True)),
            None,
            None,
        ),
        "lm_head kept fp32": (
            variant(paths["fp32"], root / "lm-head-fp32", replace(base, keep_fp32=("lm_head",))),
            None,
            None,
        ),
        "embedding Gather kept fp32": (
            variant(paths["fp32"], root / "gather-fp32", replace(base, op_types=("MatMul",))),
            None,
            None,
        ),
        "int4 weight-only (MatMulNBits, blocks of 128), `--quantize int4`": (
            variant(paths["fp32"], root / "int4", settings_for("auto", method="int4")),
            None,
            None,
        ),
        "thread spinning off": (paths["int8"], None, {"session.intra_op.allow_spinning": "0"}),
        "encoder threads spinning too": (paths["int8"], None, {"session.intra_op.allow_spinning": "1"}),
        "1 thread": (paths["int8"], 1, None),
    }
    tokenizer = paths["int8"] / "tokenizer.json"
    inputs = prompts(config.inputs, tokenizer)
    rows = {}
    for name, (path, threads, session) in artifacts.items():
        runs = [
            run_worker(
                "edgeqa-int8" + (f"@{threads}" if threads else ""), path, tokenizer, inputs, config, False, session
            )
            for _ in range(config.rounds)
        ]
        rows[name] = merge_rounds(runs) | {"size_mb": Manifest.read(path).total_bytes / 1e6}
        print(name, {k: round(v, 2) for k, v in rows[name].items() if "~" not in k})
    baseline = next(iter(rows.values()))
    lines = [
        f"| lever ({args.shape}) | b1 ms | b1 vs baseline | b8 q/s | b8 vs baseline | peak RSS MB | size MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['b1.median_ms']:.0f} | {row['b1.median_ms'] / baseline['b1.median_ms']:.2f}x | "
            f"{row['b8.questions_per_s']:.1f} | {row['b8.questions_per_s'] / baseline['b8.questions_per_s']:.2f}x | "
            f"{row['peak_rss_mb']:.0f} | {row['size_mb']:.0f} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
