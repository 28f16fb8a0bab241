"""`edgeqa bench --serve`: a bounded load generator (asyncio + httpx) against `edgeqa serve` on
loopback, beside the runtime called directly at batch 1 and batch 8 (the ceiling)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqa.records import read_records, sample_data

logger = logging.getLogger(__name__)

CONCURRENCY = (1, 4, 16, 64)


@dataclass(frozen=True)
class ServeBenchConfig:
    """What `edgeqa bench --serve` measures.

    Attributes:
        shapes: Model shapes (small, base); their int8 artifacts are served.
        concurrency: Callers at once, one measurement each.
        requests: Requests per measurement (at least 2x the concurrency are sent).
        new_tokens: Forced answer length (min = max).
        threads: onnxruntime threads of the server and of the direct runtime.
        max_batch_size: The server's --max-batch-size.
        cache: Where the benchmark models are built.
    """

    shapes: tuple[str, ...] = ("small", "base")
    concurrency: tuple[int, ...] = CONCURRENCY
    requests: int = 32
    new_tokens: int = 32
    threads: int = 2
    max_batch_size: int = 8
    cache: Path = Path("/tmp/edgeqa-bench-cache")


def questions(count: int) -> list[str]:
    """`count` bundled validation questions, cycled if needed."""
    pool = [r.question for r in read_records(sample_data("validation")) if 40 <= len(r.question) <= 200]
    return [pool[i % len(pool)] for i in range(count)]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _load(url: str, asked: list[str], concurrency: int, new_tokens: int) -> dict[str, Any]:
    import httpx

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one(question: str) -> None:
            nonlocal errors
            async with gate:
                started = time.perf_counter()
                body = {"question": question, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
                try:
                    reply = await client.post("/v1/answer", json=body)
                    ok = reply.status_code == 200 and reply.json()["answer_tokens"] == new_tokens
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(q) for q in asked))
        wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(asked),
        "questions_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p95_ms": _percentile(latencies, 0.95) * 1000 if latencies else float("nan"),
        "errors": errors,
    }


class _Server:
    def __init__(self, artifact: Path, threads: int, max_batch_size: int):
        command = [sys.executable, "-m", "edgeqa.cli", "serve", str(artifact), "--port", "0", "--threads", str(threads)]
        command += ["--max-batch-size", str(max_batch_size), "--max-queue", "512", "--no-verify"]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.url = ""
        found = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
                if match:
                    self.url = match.group(1)
                if "ready" in line and self.url:
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(300):
            self.proc.kill()
            raise RuntimeError("edgeqa serve did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _direct(artifact: Path, asked: list[str], threads: int, new_tokens: int) -> dict[str, float]:
    from edgeqa.runtime import QAModel

    model = QAModel.load(artifact, threads=threads, verify=False)
    forced = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    model.answer(asked[0], **forced)
    started = time.perf_counter()
    latencies = []
    for question in asked:
        one = time.perf_counter()
        model.answer(question, **forced)
        latencies.append(time.perf_counter() - one)
    batch1 = len(asked) / (time.perf_counter() - started)
    started = time.perf_counter()
    model.answer_batch(asked, batch_size=8, **forced)
    batch8 = len(asked) / (time.perf_counter() - started)
    return {
        "batch1_questions_per_s": batch1,
        "batch1_p50_ms": statistics.median(latencies) * 1000,
        "batch8_questions_per_s": batch8,
    }


def run_serve_benchmark(config: ServeBenchConfig) -> dict[str, Any]:
    """Per shape: the direct runtime at batch 1 and 8, then the server at each concurrency."""
    from edgeqa.bench.shapes import prepare

    results: dict[str, Any] = {"config": {k: str(v) for k, v in config.__dict__.items()}, "shapes": {}}
    for shape in config.shapes:
        artifact = prepare(shape, config.cache, ctranslate2=False, optimum=False)["int8"]
        direct = _direct(artifact, questions(config.requests), config.threads, config.new_tokens)
        logger.info("bench --serve %s direct: %s", shape, direct)
        server = _Server(artifact, config.threads, config.max_batch_size)
        rows = []
        try:
            asyncio.run(_load(server.url, questions(4), 4, config.new_tokens))  # warm the connections
            for concurrency in config.concurrency:
                asked = questions(max(config.requests, 2 * concurrency))
                rows.append(asyncio.run(_load(server.url, asked, concurrency, config.new_tokens)))
                logger.info("bench --serve %s: %s", shape, rows[-1])
        finally:
            server.stop()
        results["shapes"][shape] = {"direct": direct, "serve": rows}
    return results


def report(results: dict[str, Any]) -> str:
    """A markdown table per shape, with the issue's goals as ratios to one caller."""
    lines = []
    for shape, data in results["shapes"].items():
        direct, rows = data["direct"], data["serve"]
        single = next((r for r in rows if r["concurrency"] == 1), rows[0])
        lines += [
            f"### {shape} int8",
            "",
            "| callers | questions/s | vs 1 caller | p50 ms | p95 ms | p95 vs 1 caller | errors |",
        ]
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            speedup = r["questions_per_s"] / single["questions_per_s"]
            lines.append(
                f"| {r['concurrency']} | {r['questions_per_s']:.2f} | {speedup:.2f}x "
                f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p95_ms'] / single['p95_ms']:.2f}x | {r['errors']} |"
            )
        lines += [
            "",
            f"Runtime called directly: batch 1 {direct['batch1_questions_per_s']:.2f} questions/s "
            f"(p50 {direct['batch1_p50_ms']:.0f} ms), batch 8 {direct['batch8_questions_per_s']:.2f} questions/s.",
            "",
        ]
    return "\n".join(lines)


def write(results: dict[str, Any], output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    (output / "serve.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    path = output / "SERVE.md"
    path.write_text(report(results) + "\n", encoding="utf-8")
    return path
