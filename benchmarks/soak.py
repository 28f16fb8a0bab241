"""`edgeqa bench --serve --soak`: a bounded mixed load against `edgeqa serve` on loopback.

Callers loop for a fixed time, each request one of four kinds: ordinary (`/v1/answer`, whose tokens
must equal the runtime's own answer), streaming (`/v1/chat/completions` with `stream`, whose text
must equal it), disconnecting (a stream dropped after its first chunk) and invalid (a body the
server must refuse with a 4xx JSON error). It counts every status, every wrong answer, and the
server's resident memory after warm-up and at the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeqa.bench.machine import memory_mb

KINDS = ("ordinary", "streaming", "disconnecting", "invalid")
WEIGHTS = (5, 2, 1, 2)
# Bodies a server must refuse with a 4xx (each once found or feared in a hostile client's hands).
INVALID_BODIES: tuple[bytes, ...] = (
    b'{"question": "\\ud800 lone surrogate"}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"question": "a", "temperature": NaN, "do_sample": true}',
    b'{"question": "a", "seed": -1, "do_sample": true}',
    b'{"question": "a", "num_beams": 1000000}',
    b'{"question": "a", "max_new_tokens": 1' + b"0" * 5000 + b"}",
    b'{"question": "a\\u0000b"}',
    b'{"questions": []}',
    b"\xff\xfe",
    b'{"question": 1e400, "temperature": 1e400}',
)


@dataclass
class SoakReport:
    """What a soak run saw.

    Attributes:
        seconds: How long callers sent requests.
        callers: Callers at once.
        requests: Requests sent, by kind.
        statuses: Responses by HTTP status (0: the connection failed).
        server_errors: Responses with a 5xx status (the goal: 0).
        wrong_answers: Ordinary or streamed answers unlike the runtime's own (the goal: 0).
        rss_warm_mb, rss_end_mb: The server's resident memory after warm-up and at the end.
        failures: Connection failures (status 0) by exception, with the kind of request.
    """

    seconds: float
    callers: int
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: int = 0
    wrong_answers: int = 0
    rss_warm_mb: float = 0.0
    rss_end_mb: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def rss_growth(self) -> float:
        return self.rss_end_mb / self.rss_warm_mb - 1 if self.rss_warm_mb else 0.0

    def markdown(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in self.requests.items())
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(self.statuses.items()))
        return (
            f"| {self.seconds:.0f} s | {self.callers} | {sum(self.requests.values())} ({kinds}) | {statuses} "
            f"| {self.server_errors} | {self.wrong_answers} | {self.rss_warm_mb:.1f} -> {self.rss_end_mb:.1f} MB "
            f"({self.rss_growth * 100:+.1f}%) |"
        )


async def soak(
    url: str, pid: int, expected: dict[str, tuple[list[int], str]], seconds: float, callers: int, new_tokens: int
) -> SoakReport:
    """Load the server at `url` (process `pid`) for `seconds` with `callers` callers at once.

    Args:
        expected: The runtime's own answer (tokens, text) to each question asked, at `new_tokens`.
    """
    import httpx

    report = SoakReport(seconds=seconds, callers=callers)
    questions = list(expected)
    warm_up = min(30.0, seconds / 5)
    started = time.monotonic()
    limits = httpx.Limits(max_connections=callers, max_keepalive_connections=callers)

    def count(status: int) -> None:
        report.statuses[status] = report.statuses.get(status, 0) + 1
        report.server_errors += status >= 500

    async def one(client: httpx.AsyncClient, rng: random.Random) -> None:
        kind = rng.choices(KINDS, WEIGHTS)[0]
        report.requests[kind] += 1
        question = rng.choice(questions)
        tokens, text = expected[question]
        if kind == "ordinary":
            reply = await client.post("/v1/answer", json={"question": question, "max_new_tokens": new_tokens})
            count(reply.status_code)
            report.wrong_answers += reply.status_code == 200 and reply.json()["tokens"] != tokens
        elif kind == "invalid":
            body = rng.choice(INVALID_BODIES)
            reply = await client.post(rng.choice(["/v1/answer", "/v1/chat/completions"]), content=body)
            count(reply.status_code)
            error = reply.json().get("error", {}) if reply.status_code >= 400 else {}
            report.wrong_answers += not (400 <= reply.status_code < 500 and error.get("message"))
        else:
            request = {
                "model": "edgeqa",
                "messages": [{"role": "user", "content": question}],
                "max_tokens": new_tokens,
                "stream": True,
            }
            async with client.stream("POST", "/v1/chat/completions", json=request) as reply:
                count(reply.status_code)
                pieces = []
                async for line in reply.aiter_lines():
                    if kind == "disconnecting":
                        break  # leaving the block closes the connection mid-stream
                    if line.startswith("data: {"):
                        pieces += [c["delta"].get("content", "") for c in json.loads(line[6:]).get("choices", [])]
                if kind == "streaming":
                    report.wrong_answers += reply.status_code == 200 and "".join(pieces) != text

    async def caller(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            while time.monotonic() - started < seconds:
                try:
                    await one(client, rng)
                except httpx.HTTPError as e:
                    count(0)
                    name = f"{type(e).__name__}: {str(e)[:80]}"
                    report.failures[name] = report.failures.get(name, 0) + 1

    async def watch() -> None:
        await asyncio.sleep(warm_up)
        report.rss_warm_mb = memory_mb(pid)

    await asyncio.gather(watch(), *(caller(i) for i in range(callers)))
    await asyncio.sleep(1.0)  # the last disconnected rows leave the decoder
    report.rss_end_mb = memory_mb(pid)
    return report


def expected_answers(artifact: Path, questions: list[str], new_tokens: int, threads: int) -> dict:
    """The runtime's own answers, one question at a time: what every served answer must equal."""
    from edgeqa.runtime import QAModel

    model = QAModel.load(artifact, threads=threads, verify=False)
    answers = {q: model.answer(q, max_new_tokens=new_tokens) for q in questions}
    return {q: (a.tokens, a.text) for q, a in answers.items()}


def run_soak(
    shape: str, seconds: float, callers: int, new_tokens: int, threads: int, cache: Path, artifact: Path | None = None
) -> SoakReport:
    """The soak on `artifact`, or a benchmark shape's int8 artifact (built once into `cache`)."""
    from edgeqa.bench.serve_load import _Server, questions
    from edgeqa.bench.shapes import prepare

    artifact = artifact or prepare(shape, cache, ctranslate2=False, optimum=False)["int8"]
    asked = list(dict.fromkeys(questions(64)))
    expected = expected_answers(artifact, asked, new_tokens, threads)
    server = _Server(artifact, threads, max_batch_size=8)
    try:
        return asyncio.run(soak(server.url, server.proc.pid, expected, seconds, callers, new_tokens))
    finally:
        server.stop()


TABLE_HEAD = (
    "| duration | callers | requests (by kind) | statuses | 5xx | wrong answers | server RSS warm -> end |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def as_json(report: SoakReport) -> dict[str, Any]:
    return {**report.__dict__, "rss_growth": report.rss_growth}
