"""The side-by-side benchmark: every engine in its own process, one after another, same inputs."""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from edgeqa.bench import machine
from edgeqa.bench.footprint import footprints
from edgeqa.bench.shapes import SHAPES, prepare
from edgeqa.errors import ConfigError
from edgeqa.records import read_records, sample_data

logger = logging.getLogger(__name__)

# "engine@N" runs an engine with N threads instead of the configured count: CTranslate2 runs
# faster with one thread than with two on some 2-core machines, so both are measured and the
# ratios are taken against its better figure.
ENGINES = (
    "pytorch",
    "optimum",
    "ctranslate2",
    "ctranslate2@1",
    "edgeqa-fp32",
    "edgeqa-int8",
    "edgeqa-int8@1",
    "edgeqa-int8-per-tensor",
)
NEEDS = {
    "pytorch": ("torch", "transformers"),
    "optimum": ("optimum.onnxruntime",),
    "ctranslate2": ("ctranslate2",),
    "edgeqa-fp32": (),
    "edgeqa-int8": (),
    "edgeqa-int8-per-tensor": (),
}
LABELS = {
    "pytorch": "PyTorch fp32 eager (transformers generate)",
    "optimum": "Optimum ORTModelForSeq2SeqLM, int8",
    "ctranslate2": "CTranslate2 int8",
    "edgeqa-fp32": "edgeqa runtime fp32",
    "edgeqa-int8": "edgeqa runtime int8",
    "edgeqa-int8-per-tensor": "edgeqa runtime int8, per-tensor activations (before per-token)",
}


def split_engine(engine: str) -> tuple[str, int | None]:
    """ "ctranslate2@1" -> ("ctranslate2", 1); "pytorch" -> ("pytorch", None)."""
    name, _, threads = engine.partition("@")
    return name, int(threads) if threads else None


def label(engine: str) -> str:
    name, threads = split_engine(engine)
    return LABELS.get(name, name) + (f", {threads} thread{'s' if threads > 1 else ''}" if threads else "")


@dataclass(frozen=True)
class BenchConfig:
    """What `edgeqa bench` measures.

    Attributes:
        shapes: Model shapes (small, base).
        engines: Engines to run; ones not installed are skipped with a note.
        artifact: An extra edgeqa artifact to measure (its own shape), or None.
        inputs: Prompts (validation questions, 12 to 64 tokens).
        new_tokens: Forced answer length (min = max, end of answer suppressed).
        threads: Threads for every engine.
        rounds: Rounds per engine (the spread is reported); each round runs every engine once, so
            that a busy machine's slow spells spread over all of them.
        beam_shapes: Shapes on which beam search (4 beams, batch 1 and 8) is measured too.
        output: Results folder (README.md table, results.json, chart.png).
        cache: Where the benchmark models are built.
    """

    shapes: tuple[str, ...] = ("small", "base")
    engines: tuple[str, ...] = ENGINES
    artifact: Path | None = None
    inputs: int = 32
    new_tokens: int = 32
    threads: int = 2
    rounds: int = 2
    beam_shapes: tuple[str, ...] = ("small",)
    output: Path = Path("bench-results")
    cache: Path = Path(tempfile.gettempdir()) / "edgeqa-bench-cache"

    def __post_init__(self) -> None:
        unknown = [s for s in (*self.shapes, *self.beam_shapes) if s not in SHAPES]
        if unknown:
            raise ConfigError(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
        if self.inputs < 1 or self.new_tokens < 1 or self.rounds < 1 or self.threads < 1:
            raise ConfigError("inputs, new_tokens, rounds and threads must each be at least 1")


@dataclass
class BenchResult:
    limits: machine.MachineLimits
    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # shape -> engine -> figures
    notes: list[str] = field(default_factory=list)
    floors: dict[str, dict[str, float]] = field(default_factory=dict)


def prompts(count: int, tokenizer_path: Path) -> list[list[int]]:
    """`count` prompts of 12 to 64 tokens from the bundled validation questions."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    picked = []
    for record in read_records(sample_data("validation")):
        ids = tokenizer.encode(f"Please answer this question: {record.question}").ids
        if 12 <= len(ids) <= 64:
            picked.append(ids)
        if len(picked) == count:
            break
    return picked


def _available(engine: str) -> bool:
    try:
        return all(find_spec(module) is not None for module in NEEDS[split_engine(engine)[0]])
    except ModuleNotFoundError:
        return False


def run_worker(
    engine: str,
    path: Path,
    tokenizer: Path,
    inputs: list[list[int]],
    config: BenchConfig,
    beams: bool,
    session_config: dict[str, str] | None = None,
) -> dict[str, Any]:
    engine, threads = split_engine(engine)
    modes = [{"name": "b1", "batch": 1, "beams": 1}, {"name": "b8", "batch": 8, "beams": 1}]
    if beams:
        modes += [{"name": "beam4", "batch": 1, "beams": 4}, {"name": "beam4-b8", "batch": 8, "beams": 4}]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(
            {
                "engine": engine,
                "path": str(path),
                "tokenizer": str(tokenizer),
                "prompts": inputs,
                "new_tokens": config.new_tokens,
                "threads": threads or config.threads,
                "modes": modes,
                "session_config": session_config,
                "spawned_at": time.time(),
            },
            f,
        )
    result = subprocess.run([sys.executable, "-m", "edgeqa.bench.worker", f.name], capture_output=True, text=True)
    Path(f.name).unlink()
    if result.returncode != 0:
        raise RuntimeError(f"{engine} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each figure, with the relative spread (max - min) / median."""
    merged: dict[str, Any] = {"rounds": len(rounds)}
    flat = [_flatten(r) for r in rounds]
    for key in flat[0]:
        values = [f[key] for f in flat]
        middle = statistics.median(values)
        merged[key] = middle
        merged[key + "~spread"] = (max(values) - min(values)) / middle if middle else 0.0
    return merged


def _flatten(result: dict[str, Any]) -> dict[str, float]:
    flat = {k: v for k, v in result.items() if k != "modes"}
    for mode, figures in result["modes"].items():
        flat.update({f"{mode}.{k}": v for k, v in figures.items()})
    return flat


def run_benchmark(config: BenchConfig) -> BenchResult:
    result = BenchResult(limits=machine.measure())
    engines = [e for e in config.engines if _available(e)]
    result.notes += [
        f"{label(e)} skipped: not installed (pip install 'edgeqa[bench]')" for e in config.engines if e not in engines
    ]
    targets: list[tuple[str, dict[str, Path]]] = []
    for shape in config.shapes:
        targets.append(
            (
                shape,
                prepare(
                    shape,
                    config.cache,
                    ctranslate2=any(e.startswith("ctranslate2") for e in engines),
                    optimum="optimum" in engines,
                ),
            )
        )
    if config.artifact:
        targets.append((f"artifact {config.artifact.name}", {"int8": config.artifact}))
    for shape, paths in targets:
        tokenizer = paths["int8"] / "tokenizer.json"
        inputs = prompts(config.inputs, tokenizer)
        result.rows[shape] = {}
        weight_bytes, flops = machine.decoder_step_cost(paths["int8"])
        result.floors[shape] = {
            "int8_bytes_per_step": weight_bytes,
            "flops_per_step": flops,
            "floor_ms_per_token": max(
                weight_bytes / (result.limits.bandwidth_gbs * 1e9), flops / (result.limits.gemm_gflops * 1e9)
            )
            * 1000,
        }
        runs: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
        for engine in engines:
            path = {
                "pytorch": paths.get("checkpoint"),
                "optimum": paths.get("optimum"),
                "ctranslate2": paths.get("ct2"),
                "edgeqa-fp32": paths.get("fp32"),
                "edgeqa-int8": paths.get("int8"),
                "edgeqa-int8-per-tensor": paths.get("int8-per-tensor"),
            }[split_engine(engine)[0]]
            if path is not None:
                runs[engine] = (path, [])
        for round_ in range(config.rounds):
            for engine, (path, rounds) in runs.items():
                logger.info("bench: %s / %s, round %d", shape, engine, round_ + 1)
                rounds.append(run_worker(engine, path, tokenizer, inputs, config, beams=shape in config.beam_shapes))
        for engine, (path, rounds) in runs.items():
            row = merge_rounds(rounds)
            row["size_mb"] = _size_mb(path)
            result.rows[shape][engine] = row
    result.notes += [f"install footprint of {name}: {mb:.0f} MB" for name, mb in footprints().items()]
    return result


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    keep = (".onnx", ".data", ".json", ".bin", ".safetensors", ".txt", ".model")
    return sum(p.stat().st_size for p in files if p.suffix in keep) / 1e6
