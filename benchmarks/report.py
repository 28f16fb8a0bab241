"""The benchmark's Markdown table and PNG chart."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from edgeqa.bench.run import BenchResult, label

COLUMNS = [
    ("b1.median_ms", "b1 median ms", "{:.0f}"),
    ("b1.p90_ms", "b1 p90 ms", "{:.0f}"),
    ("b1.ms_per_token", "ms/token", "{:.2f}"),
    ("b8.questions_per_s", "b8 q/s", "{:.1f}"),
    ("b8.same_as_b1", "b8 answers = b1", "{:.0%}"),
    ("beam4.median_ms", "beam-4 b1 ms", "{:.0f}"),
    ("beam4-b8.questions_per_s", "beam-4 b8 q/s", "{:.1f}"),
    ("cold_start_s", "cold start s", "{:.2f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("size_mb", "size MB", "{:.0f}"),
]

# figures compared with CTranslate2's better row (1 or 2 threads)
VERSUS_CT2 = [
    ("b1.median_ms", "b1"),
    ("b8.questions_per_s", "b8"),
    ("beam4.median_ms", "beam-4 b1"),
    ("beam4-b8.questions_per_s", "beam-4 b8"),
]


def markdown(result: BenchResult, threads: int, new_tokens: int, inputs: int) -> str:
    limits = result.limits
    lines = [
        f"Machine: {limits.cpu}, {limits.cores} physical cores; memory bandwidth {limits.bandwidth_gbs:.1f} GB/s, "
        f"numpy fp32 GEMM {limits.gemm_gflops:.0f} GFLOP/s. {threads} threads for every engine, {inputs} inputs "
        f"of 12-64 tokens, exactly {new_tokens} new tokens, greedy unless noted; median of the rounds, "
        "spread in parentheses where over 10%.",
        "",
    ]
    for shape, engines in result.rows.items():
        lines += [f"### {shape}", ""]
        lines.append(
            "| engine | "
            + " | ".join(title for _, title, _ in COLUMNS)
            + " | b1 vs PyTorch | "
            + " | ".join(f"{title} vs best CT2" for _, title in VERSUS_CT2)
            + " |"
        )
        lines.append("| --- |" + " --- |" * (len(COLUMNS) + 1 + len(VERSUS_CT2)))
        torch_b1 = engines.get("pytorch", {}).get("b1.median_ms")
        ct2_rows = [row for engine, row in engines.items() if engine.startswith("ctranslate2")]
        ct2 = {key: _best(key, [r[key] for r in ct2_rows if key in r]) for key, _ in VERSUS_CT2}
        for engine, row in engines.items():
            cells = []
            for key, _, fmt in COLUMNS:
                if key not in row:
                    cells.append("–")
                    continue
                spread = row.get(key + "~spread", 0)
                cells.append(fmt.format(row[key]) + (f" ({spread:.0%})" if spread > 0.10 else ""))
            ratios = [_ratio(row.get("b1.median_ms"), torch_b1)]
            ratios += [_ratio(row.get(key), ct2[key]) for key, _ in VERSUS_CT2]
            lines.append(f"| {label(engine)} | " + " | ".join(cells + ratios) + " |")
        floor = result.floors.get(shape)
        if floor:
            lines += [
                "",
                f"Physical limit ({shape}): the int8 decoder reads {floor['int8_bytes_per_step'] / 1e6:.1f} MB "
                f"of weights and does {floor['flops_per_step'] / 1e6:.0f} MFLOP per step at batch 1, a floor of "
                f"{floor['floor_ms_per_token']:.2f} ms per token on this machine.",
            ]
        lines.append("")
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _best(key: str, values: list[float]) -> float | None:
    """The better figure: the lowest latency or the highest throughput."""
    if not values:
        return None
    return min(values) if key.endswith("_ms") else max(values)


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if value and reference else "–"


def chart(result: BenchResult, path: Path) -> Path | None:
    """Latency and throughput per engine and shape; None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shapes = list(result.rows)
    fig, axes = plt.subplots(len(shapes), 2, figsize=(12, 3.2 * len(shapes)), squeeze=False)
    for row, shape in enumerate(shapes):
        engines = result.rows[shape]
        names = [label(e).replace(" (transformers generate)", "") for e in engines]
        for col, (key, title) in enumerate(
            (
                ("b1.median_ms", "batch-1 latency, ms (lower is better)"),
                ("b8.questions_per_s", "batch-8 throughput, questions/s"),
            )
        ):
            ax = axes[row][col]
            values = [engines[e].get(key, 0) for e in engines]
            ax.barh(names, values, color=["#d62728" if "edgeqa" in e else "#7f7f7f" for e in engines])
            ax.set_title(f"{shape}: {title}", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: BenchResult, folder: Path, threads: int, new_tokens: int, inputs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = markdown(result, threads, new_tokens, inputs)
    (folder / "README.md").write_text("# edgeqa benchmark\n\n" + table, encoding="utf-8")
    (folder / "results.json").write_text(
        json.dumps(
            {"limits": asdict(result.limits), "rows": result.rows, "floors": result.floors, "notes": result.notes},
            indent=2,
        )
    )
    chart(result, folder / "chart.png")
    return folder / "README.md"
