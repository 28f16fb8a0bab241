"""The facts demo under each of ATen's CPU kernel sets: how much do its figures hang on the last bits?

Training a small model from random weights is chaotic: a change in the last bit of a sum (ATen,
torch's operator library, picks AVX-512, AVX2 or plain kernels for the CPU it runs on) sends it
down another path. Whether the demo's figures survive that depends on what it learns from. The
matrix products are MKL's, which picks its own instruction set and is not varied here, so another
machine can differ more than this shows. This runs the demo
(`edgeqa.demo.run_demo`) once per kernel set (`ATEN_CPU_CAPABILITY`) and per number of training
phrasings a relation, each run in its own process, and reports the int8 artifact's exact match on
the held-out phrasing and on the never-seen templates.

    python -m edgeqa.bench.demo_kernels --train-phrasings 3 all > demo-kernels.md  # progress on stderr
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: ATen's names for its CPU kernel sets; "native" leaves the choice to torch (the machine's best).
KERNELS = ("native", "avx2", "default")
#: Run in a fresh process, so that ATEN_CPU_CAPABILITY is read before torch loads.
_RUN = """
import json, sys
from edgeqa.demo import run_demo
phrasings = None if sys.argv[2] == "all" else int(sys.argv[2])
result = run_demo(sys.argv[1], train_phrasings=phrasings, force=True)
print(json.dumps(result.exact_match))
"""


@dataclass(frozen=True)
class KernelRun:
    kernels: str
    train_phrasings: str
    heldout: float  # exact match, held-out phrasing
    unseen: float  # exact match, never-seen templates
    seconds: float


def run_once(kernels: str, train_phrasings: str, output: Path) -> KernelRun:
    """One demo in its own process under `kernels`; its exact match by split."""
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if kernels != "native":
        env["ATEN_CPU_CAPABILITY"] = kernels
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(output), train_phrasings], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"the demo under {kernels} kernels failed:\n{done.stderr[-2000:]}")
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    return KernelRun(kernels, train_phrasings, scores["validation"], scores["test"], time.perf_counter() - start)


def report(runs: list[KernelRun]) -> str:
    """A markdown table, one row per run, and the spread of each figure per number of phrasings."""
    lines = [
        "| train phrasings a relation | kernels | held-out phrasing | never-seen templates | wall |",
        "| --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        lines.append(
            f"| {run.train_phrasings} | {run.kernels} | {run.heldout * 100:.1f}% | {run.unseen * 100:.1f}% "
            f"| {run.seconds:.0f} s |"
        )
    lines.append("")
    for phrasings in dict.fromkeys(run.train_phrasings for run in runs):
        mine = [run for run in runs if run.train_phrasings == phrasings]
        held, unseen = [r.heldout * 100 for r in mine], [r.unseen * 100 for r in mine]
        lines.append(
            f"- {phrasings} phrasings: held-out {min(held):.1f}-{max(held):.1f}% "
            f"(spread {max(held) - min(held):.1f} points), never-seen {min(unseen):.1f}-{max(unseen):.1f}% "
            f"(spread {max(unseen) - min(unseen):.1f})"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--train-phrasings", nargs="+", default=["all"], help="numbers of training phrasings a relation, or all"
    )
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="edgeqa-demo-kernels-") as tmp:
        for phrasings in args.train_phrasings:
            for kernels in args.kernels:
                runs.append(run_once(kernels, phrasings, Path(tmp) / f"{phrasings}-{kernels}"))
                print(f"{phrasings} phrasings, {kernels} kernels: {runs[-1]}", file=sys.stderr, flush=True)
    print(report(runs))


if __name__ == "__main__":
    main()
