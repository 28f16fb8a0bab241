"""The server's memory under the largest requests it accepts (`python -m edgeqa.bench.serve_memory`).

    python -m edgeqa.bench.serve_memory --shape base

Starts `edgeqa serve` with its default caps on a benchmark shape's int8 artifact and sends, one
after the other, the largest requests those caps accept: a beam search at `--max-beams` over a
prompt at the artifact's input limit forced to the answer limit, then `--max-batch-size` such
greedy requests at once (one batch). Reports the server's resident memory when idle and its peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from edgeqa.bench.machine import memory_mb


async def largest_requests(url: str, question: str, new_tokens: int, beams: int, batch: int) -> list[int]:
    import httpx

    forced = {"question": question, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        statuses = [(await client.post("/v1/answer", json={**forced, "num_beams": beams})).status_code]
        replies = await asyncio.gather(*(client.post("/v1/answer", json=forced) for _ in range(batch)))
    return statuses + [reply.status_code for reply in replies]


def main() -> None:
    from edgeqa.bench.serve_load import _Server
    from edgeqa.bench.shapes import prepare
    from edgeqa.manifest import Manifest
    from edgeqa.serve import ServeConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/edgeqa-bench-cache"))
    parser.add_argument("--artifact", type=Path, help="an int8 artifact of that shape (default: build one)")
    args = parser.parse_args()
    artifact = args.artifact or prepare(args.shape, args.cache, ctranslate2=False, optimum=False)["int8"]
    manifest = Manifest.read(artifact)
    defaults = ServeConfig(artifact=artifact)
    question = " ".join(["why"] * 4 * manifest.max_input_tokens)  # cut to the input limit
    server = _Server(artifact, args.threads, defaults.max_batch_size)
    try:
        idle = memory_mb(server.proc.pid)
        statuses = asyncio.run(
            largest_requests(
                server.url, question, manifest.max_answer_tokens, defaults.max_beams, defaults.max_batch_size
            )
        )
        peak = memory_mb(server.proc.pid, "VmHWM")
    finally:
        server.stop()
    print(
        json.dumps(
            {
                "shape": args.shape,
                "max_input_tokens": manifest.max_input_tokens,
                "max_answer_tokens": manifest.max_answer_tokens,
                "max_beams": defaults.max_beams,
                "max_batch_size": defaults.max_batch_size,
                "statuses": statuses,
                "idle_rss_mb": round(idle, 1),
                "peak_rss_mb": round(peak, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
