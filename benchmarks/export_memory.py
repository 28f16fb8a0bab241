"""Peak memory, time and sizes of `edgeqa export` on a FLAN-T5-shaped checkpoint (random weights),
each export its own process, whose peak resident set (`VmHWM`) it reports as it exits.

    python -m edgeqa.bench.export_memory --shape large --output bench-results/export-memory.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgeqa.manifest import Manifest

#: Runs `edgeqa ARGS`; the file named first receives the process's own peak memory as it exits
#: (`edgeqa.bench.machine.peak_rss_mb`: the waiting parent's `ru_maxrss` would include its own peak).
_REPORT_PEAK = """
import atexit, runpy, sys
from pathlib import Path
from edgeqa.bench.machine import peak_rss_mb
peak_file = Path(sys.argv.pop(1))
atexit.register(lambda: peak_file.write_text(str(peak_rss_mb())))
runpy.run_module("edgeqa.cli", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Measured:
    """One command: its exit status, peak resident memory in bytes (0 if it died unreported), wall seconds."""

    returncode: int
    peak: int
    seconds: float
    output: str


def measure(args: list[str]) -> Measured:
    """Run `edgeqa ARGS` in a fresh process: its exit status, output, wall time and own peak memory."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeqa-peak-") as tmp:
        peak_file = Path(tmp) / "peak-mb"
        command = [sys.executable, "-c", _REPORT_PEAK, str(peak_file), *args]
        run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        peak_mb = float(peak_file.read_text()) if peak_file.is_file() else 0.0
    return Measured(run.returncode, int(peak_mb * 1024 * 1024), time.perf_counter() - start, run.stdout)


def checkpoint_bytes(checkpoint: Path) -> int:
    """The checkpoint's weights (one safetensors file, or shards)."""
    total = sum(path.stat().st_size for path in checkpoint.glob("*.safetensors"))
    if not total:
        raise SystemExit(f"{checkpoint} holds no *.safetensors weights; save it with save_pretrained()")
    return total


def export_args(checkpoint: Path, output: Path, *options: str) -> list[str]:
    return ["export", str(checkpoint), str(output), "--force", *options]


def report(shape: str, checkpoint: Path, work: Path, parity_samples: int) -> str:
    """Exports (int8 with no gate, int8 through the gate, fp32), a question to each artifact, as a table."""
    weights = checkpoint_bytes(checkpoint)
    runs = {
        "int8, no gate": ("--quantize", "--no-parity"),
        f"int8, gate on {parity_samples} questions": (
            "--quantize",
            "--fallback=none",
            f"--parity-samples={parity_samples}",
            "--allow-parity-failure",
        ),
        "fp32, no gate": ("--no-parity",),
    }
    rows = [
        f"flan-t5-{shape}-shaped checkpoint (random weights): {weights / 1e9:.2f} GB of fp32 weights",
        "",
        "| export | wall s | peak RSS GB | peak / checkpoint | artifact GB | artifact / checkpoint | answers |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, options in runs.items():
        output = work / name.split(",")[0]
        run = measure(export_args(checkpoint, output, *options))
        if run.returncode != 0:
            raise SystemExit(f"{name}: edgeqa export failed:\n{run.output[-3000:]}")
        asked = measure(["ask", str(output), "What is the capital of France?"])
        size = sum(entry.size for entry in Manifest.read(output).files.values())
        answers = f"yes ({asked.peak / 1e9:.2f} GB to answer)" if asked.returncode == 0 else "no"
        rows.append(
            f"| {name} | {run.seconds:.0f} | {run.peak / 1e9:.2f} | {run.peak / weights:.2f}x "
            f"| {size / 1e9:.2f} | {size / weights:.0%} | {answers} |"
        )
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="large", help="a FLAN-T5 shape: small, base, large, xl")
    parser.add_argument("--checkpoint", type=Path, help="an existing checkpoint of that shape (else one is built)")
    parser.add_argument("--parity-samples", type=int, default=16)
    parser.add_argument("--output", type=Path, help="also write the table here")
    args = parser.parse_args()
    from edgeqa.finetune.models import FLAN_T5_SHAPES, build_random_t5

    with tempfile.TemporaryDirectory(prefix="edgeqa-export-memory-") as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint or build_random_t5(work / "checkpoint", **FLAN_T5_SHAPES[args.shape])
        table = report(args.shape, checkpoint, work, args.parity_samples)
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
