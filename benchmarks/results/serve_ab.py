"""One side of the serve A/B in decoder.md: questions/s at 16 callers, forced 32-token answers.

    python benchmarks/results/serve_ab.py ARTIFACT     # run it with each side's Python, alternating

Starts `edgeqa serve` from the Python that runs this script (so from that side's code), warms
it, and prints the questions/s of two loads of 64 questions at 16 callers, then the error count.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from edgeqa.bench.serve_load import _load, _Server, questions


def main() -> None:
    server = _Server(Path(sys.argv[1]), threads=2, max_batch_size=8)
    try:
        asyncio.run(_load(server.url, questions(8), 4, 32))  # warm
        rows = [asyncio.run(_load(server.url, questions(64), 16, 32)) for _ in range(2)]
    finally:
        server.stop()
    print(json.dumps([round(r["questions_per_s"], 3) for r in rows] + [sum(r["errors"] for r in rows)]))


if __name__ == "__main__":
    main()
