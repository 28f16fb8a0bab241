"""A server no request can break: one caller's failure stays its own, hostile bodies get a 4xx, and
property-based fuzzing and a soak against a real uvicorn on 127.0.0.1 find no 5xx.

Bounds: the fuzz sends at most FUZZ_EXAMPLES generated requests to each of the three endpoints
plus FUZZ_EXAMPLES raw byte strings (4 x 60 = 240 requests), within FUZZ_SECONDS, and a third of
that to a server reading an index (`serve --index`); the soak runs 60 s at 8 callers.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")

import httpx  # noqa: E402
from faults import Poisoned  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from serve_helpers import ServerProcess, asgi_call, in_process, metric, openai_client  # noqa: E402

from edgeqa.bench.soak import INVALID_BODIES, expected_answers, soak  # noqa: E402
from edgeqa.runtime import QAModel  # noqa: E402
from edgeqa.serve.protocol import parse_openai  # noqa: E402

ORDINARY = ["What is the capital of France?", "Who wrote Hamlet?", "Name a planet.", "Why is the sky blue?"]
FUZZ_EXAMPLES = 60
FUZZ_SECONDS = 240
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def model(artifact_tiny: Path) -> QAModel:
    return QAModel.load(artifact_tiny, threads=1)


def test_a_failing_row_fails_its_request_only_and_its_batch_mates_answer_as_alone(artifact_tiny, model):
    questions = ORDINARY + ["How do bees make honey?", "What is AI?", "Where is Peru?"]
    lengths = {len(ids) for ids in model.tokenizer.encode(questions)}
    poison = next(
        " ".join(["why"] * n)
        for n in range(1, 200)
        if len(model.tokenizer.encode([" ".join(["why"] * n)])[0]) not in lengths
    )
    expected = [model.answer(q, max_new_tokens=NEW_TOKENS).tokens for q in questions]
    poisoned = QAModel.load(artifact_tiny, threads=1)
    poisoned.graphs = Poisoned(poisoned.graphs, len(poisoned.tokenizer.encode([poison])[0]), "step")  # type: ignore[assignment]

    async def body(app, http):
        asked = [*questions[:3], poison, *questions[3:]]
        replies = await asyncio.gather(
            *(http.post("/v1/answer", json={"question": q, "max_new_tokens": NEW_TOKENS}) for q in asked)
        )
        failed = replies.pop(3)
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        assert (
            "req-" in failed.json()["error"]["message"] and "injected step failure" in failed.json()["error"]["message"]
        )
        assert [r.status_code for r in replies] == [200] * len(questions)
        assert [r.json()["tokens"] for r in replies] == expected
        batches = metric((await http.get("/metrics")).text, "edgeqa_batch_size_count") - 1  # the warm-up is one
        assert batches <= 2, "the poisoned request must have shared a batch with the others"

    in_process(artifact_tiny, poisoned, body, max_batch_size=8, batch_wait_ms=100)


HOSTILE = [
    (b'{"question": "\\ud800 unpaired"}', "/v1/answer", "question"),
    (b'{"messages": [{"role": "user", "content": "hi \\udfff"}]}', "/v1/chat/completions", "messages[0].content"),
    (b'{"prompt": "hi", "stop": ["\\ud800"]}', "/v1/completions", "stop"),
    (b'{"prompt": "hi", "stop": ["' + b"x" * 300 + b'"]}', "/v1/completions", "stop"),
    (b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", "/v1/chat/completions", None),
    (b'{"question": "a", "temperature": Infinity, "do_sample": true}', "/v1/answer", "temperature"),
    (b'{"question": "a", "temperature": NaN, "do_sample": true}', "/v1/answer", "temperature"),
    (b'{"prompt": "a", "temperature": NaN}', "/v1/completions", "temperature"),
    (b'{"question": "a", "seed": -1, "do_sample": true}', "/v1/answer", "seed"),
    (b'{"prompt": "a", "seed": 99999999999999999999999, "temperature": 1}', "/v1/completions", "seed"),
    (b'{"question": "a", "num_beams": 1000000}', "/v1/answer", "num_beams"),
    (b'{"question": "a", "max_new_tokens": 100000}', "/v1/answer", "max_new_tokens"),
    (b'{"prompt": "a", "max_tokens": 1000000}', "/v1/completions", "max_tokens"),
    (b'{"question": "a", "max_new_tokens": 1' + b"0" * 5000 + b"}", "/v1/answer", None),
    (b'{"question": "a", "length_penalty": 1e308, "num_beams": 2}', "/v1/answer", "length_penalty"),
    (b'{"question": "a", "repetition_penalty": 1' + b"0" * 400 + b"}", "/v1/answer", "repetition_penalty"),
    (b'{"question": "a", "top_k": -5}', "/v1/answer", "top_k"),
    (b'{"question": "a", "\\ud800": 1}', "/v1/answer", '"\\ud800"'),  # a key UTF-8 cannot carry: escaped
    (b'{"question": "a", "do_sample": true, "repetition_penalty": 1e-39}', "/v1/answer", "repetition_penalty"),
    *((body, "/v1/answer", None) for body in INVALID_BODIES),
]


def test_hostile_bodies_get_a_4xx_naming_the_field(artifact_tiny, model):
    async def body(app, http):
        for raw, path, param in HOSTILE:
            reply = await http.post(path, content=raw, headers={"content-type": "application/json"})
            assert 400 <= reply.status_code < 500, (raw[:80], reply.text[:200])
            error = reply.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], raw[:80]
            if param is not None:
                assert error["param"] == param, (raw[:80], error)
        over = (await http.post("/v1/completions", json={"prompt": "a", "max_tokens": 10**6})).json()["error"]
        assert over["code"] == "over_cap" and str(model.manifest.max_answer_tokens) in over["message"]
        beams = (await http.post("/v1/answer", json={"question": "a", "num_beams": 5})).json()["error"]
        assert beams["code"] == "over_cap" and "--max-beams" in beams["message"]

    in_process(artifact_tiny, model, body, max_new_tokens=512)


def test_the_caps_bound_what_a_request_leaves_to_the_artifacts_defaults(artifact_tiny):
    model = QAModel.load(artifact_tiny, threads=1)
    model.defaults = model.defaults.updated(num_beams=3, max_new_tokens=64)  # an artifact asking for more
    greedy = model.answer(ORDINARY[0], num_beams=1, max_new_tokens=5)

    async def body(app, http):
        reply = (await http.post("/v1/answer", json={"question": ORDINARY[0]})).json()
        assert reply["tokens"] == greedy.tokens  # greedy (--max-beams 1), 5 tokens (--max-new-tokens 5)
        chat = {"messages": [{"role": "user", "content": ORDINARY[0]}]}
        answered = (await http.post("/v1/chat/completions", json=chat)).json()
        assert answered["choices"][0]["message"]["content"] == greedy.text

    in_process(artifact_tiny, model, body, max_new_tokens=5, max_beams=1)


def test_a_tiny_temperature_answers_as_greedy_search(artifact_tiny, model):
    async def body(app, http):
        answers = []
        for temperature in (0, 1e-30, 1e-6):
            request = {"messages": [{"role": "user", "content": ORDINARY[0]}], "temperature": temperature}
            reply = (await http.post("/v1/chat/completions", json={**request, "max_tokens": NEW_TOKENS})).json()
            answers.append(reply["choices"][0]["message"]["content"])
        greedy = model.answer(ORDINARY[0], max_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False).text
        assert answers == [greedy] * 3

    in_process(artifact_tiny, model, body)


# ------------------------------------------------------------------ hostile callers


def test_a_huge_question_is_tokenized_off_the_event_loop(artifact_tiny, model, monkeypatch):
    """While one caller's question is being tokenized (held here), another caller is answered."""
    huge = "why " * 20000
    tokenizing, release = threading.Event(), threading.Event()
    released: list[bool] = []
    encode = model.tokenizer.encode_checked

    def held(questions, contexts=None):
        if questions[0] == huge:
            tokenizing.set()
            released.append(release.wait(5))  # False: nobody released it, the event loop was stuck here
        return encode(questions, contexts)

    monkeypatch.setattr(model.tokenizer, "encode_checked", held)

    async def body(app, http):
        chat = {"messages": [{"role": "user", "content": huge}], "max_tokens": 2}
        big = asyncio.create_task(http.post("/v1/chat/completions", json=chat))
        assert await asyncio.to_thread(tokenizing.wait, 10)
        small = await asyncio.wait_for(http.post("/v1/answer", json={"question": "Hi?", "max_new_tokens": 2}), 10)
        assert small.status_code == 200 and small.json()["answer_tokens"] == 2
        release.set()
        refused = await asyncio.wait_for(big, 10)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
        assert released == [True]

    in_process(artifact_tiny, model, body)


def test_a_caller_leaving_mid_upload_is_counted_499_and_logs_no_error(artifact_tiny, model, caplog):
    async def body(app, http):
        partial = [{"type": "http.request", "body": b'{"messages": [{"role"', "more_body": True}]
        sent = await asgi_call(app, "/v1/chat/completions", [*partial, {"type": "http.disconnect"}])
        assert sent[0]["status"] == 499
        text = (await http.get("/metrics")).text
        assert metric(text, 'edgeqa_requests_total{endpoint="/v1/chat/completions",status="499"}') == 1
        assert metric(text, 'edgeqa_requests_total{endpoint="/v1/chat/completions",status="500"}') == 0

    with caplog.at_level(logging.WARNING):
        in_process(artifact_tiny, model, body)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_plain_caller_leaving_before_its_answer_logs_nothing(artifact_tiny, model, caplog):
    """Found by a hostile client: every plain (non-streaming) caller that left logged
    `_GatheringFuture exception was never retrieved`."""

    async def body(app, http):
        question = json.dumps({"question": "Why?", "max_new_tokens": 512, "min_new_tokens": 512}).encode()
        for _ in range(3):
            sent = await asgi_call(app, "/v1/answer", [{"type": "http.request", "body": question}])
            assert sent[0]["status"] == 499
        await asyncio.sleep(0.2)  # the cancelled waits finish
        gc.collect()
        await asyncio.sleep(0)

    with caplog.at_level(logging.WARNING):
        in_process(artifact_tiny, model, body)
        gc.collect()
    assert "never retrieved" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_null_max_completion_tokens_counts_as_absent(artifact_tiny, model):
    both = {"prompt": "Why?", "max_completion_tokens": None, "max_tokens": 2}
    assert parse_openai(both, model, chat=False).options.max_new_tokens == 2
    other = {"prompt": "Why?", "max_completion_tokens": 3, "max_tokens": None}
    assert parse_openai(other, model, chat=False).options.max_new_tokens == 3

    async def body(app, http):
        chat = {"messages": [{"role": "user", "content": "Why?"}], "max_completion_tokens": None, "max_tokens": 2}
        reply = (await http.post("/v1/chat/completions", json=chat)).json()
        assert reply["usage"]["completion_tokens"] == 2 and reply["choices"][0]["finish_reason"] == "length"

    in_process(artifact_tiny, model, body)


@pytest.fixture(scope="module")
def index(artifact_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeqa.documents import build_index

    docs = tmp_path_factory.mktemp("docs")
    (docs / "ai.md").write_text("# AI\n\nAI is the study of machines that learn.\n\nWhat is AI? A field.\n")
    path = tmp_path_factory.mktemp("index") / "docs.edgeqa-index"
    build_index([docs], path, artifact_tiny / "tokenizer.json", passage_tokens=64)
    return path


def test_answers_from_the_index_report_the_readings_finish_reason(artifact_tiny, model, index):
    """An answer cut by max_tokens finishes with "length", from the index as without it."""
    from edgeqa.documents import DocumentsQA, Index

    question = "What is AI?"
    with DocumentsQA(model, Index.open(index)) as qa:
        read = qa.ask(question, model.options(max_new_tokens=3))
    assert read.source is not None
    expected = model.answer(question, context=read.source.text, max_new_tokens=3).finish_reason
    assert expected == "length"  # the untrained model never ends an answer in 3 tokens
    assert read.finish_reason == read.to_dict()["finish_reason"] == expected  # the library's answer says so too

    async def body(app, http):
        client = openai_client(http)
        messages = [{"role": "user", "content": question}]
        reply = await client.chat.completions.create(model="edgeqa", messages=messages, max_tokens=3)
        assert reply.choices[0].finish_reason == expected and reply.usage.completion_tokens == 3
        done = await client.completions.create(model="edgeqa", prompt=question, max_tokens=3)
        assert done.choices[0].finish_reason == expected
        stream = await client.chat.completions.create(model="edgeqa", messages=messages, max_tokens=3, stream=True)
        reasons = [chunk.choices[0].finish_reason async for chunk in stream if chunk.choices]
        assert reasons[-1] == expected
        native = (await http.post("/v1/answer", json={"question": question, "max_new_tokens": 3})).json()
        assert native["finish_reason"] == expected

    in_process(artifact_tiny, model, body, index=index)


# ------------------------------------------------------------------ fuzzing a real server

FIELDS = {
    "/v1/answer": [
        "question",
        "questions",
        "stream",
        "max_new_tokens",
        "min_new_tokens",
        "num_beams",
        "length_penalty",
        "early_stopping",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "no_repeat_ngram_size",
        "repetition_penalty",
        "context",
    ],
    "/v1/chat/completions": [
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "stream",
        "stream_options",
        "context",
    ],
    "/v1/completions": [
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "stream",
        "context",
    ],
}
VALID = {
    "/v1/answer": {"question": "What is AI?", "max_new_tokens": 4},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "What is AI?"}], "max_tokens": 4},
    "/v1/completions": {"prompt": "What is AI?", "max_tokens": 4},
}
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 4, -1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-30, 1e30, 0.5, 2.0, 1.0000001]),
    st.text(max_size=40),  # odd Unicode included: lone surrogates are sent as \\udXXX escapes
    st.sampled_from(["", " ", "\x00", "\ud800", "What is AI?", "a" * 3000]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)),
    max_leaves=30,
)


@st.composite
def request_bodies(draw: st.DrawFn, path: str) -> bytes:
    """A body for `path`: a valid request with fields replaced, added or removed, or any JSON at all."""
    shape = draw(st.sampled_from(["mutated", "fields", "any", "deep"]))
    if shape == "any":
        return json.dumps(draw(json_values)).encode()
    if shape == "deep":
        depth = draw(st.integers(1, 3000))
        return (
            ("[" * depth + "]" * depth).encode()
            if draw(st.booleans())
            else ('{"a":' * depth + "1" + "}" * depth).encode()
        )
    body = dict(VALID[path]) if shape == "mutated" else {}
    for name in draw(st.lists(st.sampled_from(FIELDS[path]), max_size=5)):
        body[name] = draw(json_values)
    if shape == "mutated" and draw(st.booleans()):
        body.pop(draw(st.sampled_from(sorted(body))), None)
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def real_server(artifact_tiny):
    process = ServerProcess(artifact_tiny, "--max-new-tokens", "16", "--max-queue", "16", "--no-verify")
    yield process
    process.stop()


def check_reply(reply: httpx.Response) -> None:
    assert reply.status_code < 500, reply.text[:300]
    if reply.status_code >= 400:
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)


def ordinary_answers(url: str) -> list[str]:
    return [
        httpx.post(url + "/v1/answer", json={"question": q, "max_new_tokens": NEW_TOKENS}, timeout=60).json()["answer"]
        for q in ORDINARY
    ]


@pytest.mark.slow
def test_fuzzed_requests_never_get_a_5xx_and_the_server_keeps_its_answers(real_server):
    fuzz_server(real_server, FUZZ_EXAMPLES, FUZZ_SECONDS)


@pytest.mark.slow
def test_fuzzed_requests_to_a_server_reading_an_index(artifact_tiny, tmp_path):
    """The same fuzz, fewer examples, against `serve --index`: answers from passages, sources, own contexts."""
    from edgeqa.documents import build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ai.md").write_text("# AI\n\nAI is the study of machines that learn.\n\nWhat is AI? A field.\n")
    index = tmp_path / "docs.edgeqa-index"
    build_index([docs], index, artifact_tiny / "tokenizer.json", passage_tokens=64)
    process = ServerProcess(
        artifact_tiny, "--max-new-tokens", "16", "--max-queue", "16", "--no-verify", "--index", str(index)
    )
    try:
        fuzz_server(process, FUZZ_EXAMPLES // 3, FUZZ_SECONDS // 3)
    finally:
        process.stop()


def fuzz_server(server: ServerProcess, examples: int, seconds: float) -> None:
    """Fuzz each endpoint with `examples` generated bodies and as many raw byte strings, within `seconds`:
    no 5xx, errors in OpenAI's shape, /health 200 afterwards and ordinary answers as before."""
    url, deadline = server.url, time.monotonic() + seconds
    before = ordinary_answers(url)
    sent = 0
    fuzz = settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )

    def endpoint(path: str) -> None:
        @fuzz
        @given(body=request_bodies(path))
        def send(body: bytes) -> None:
            nonlocal sent
            if time.monotonic() > deadline:
                return
            sent += 1
            check_reply(httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=60))

        send()

    for path in FIELDS:
        endpoint(path)

    @fuzz
    @given(raw=st.binary(max_size=300), path=st.sampled_from(sorted(FIELDS)))
    def raw_bytes(raw: bytes, path: str) -> None:
        nonlocal sent
        if time.monotonic() > deadline:
            return
        sent += 1
        check_reply(httpx.post(url + path, content=raw, timeout=60))

    raw_bytes()
    assert sent >= 3 * examples, f"only {sent} requests within {seconds} s"
    assert httpx.get(url + "/health", timeout=5).status_code == 200
    assert ordinary_answers(url) == before
    metrics = server.metrics()
    assert metric(metrics, "edgeqa_requests_total") >= sent
    server_errors = [
        line
        for line in metrics.splitlines()
        if line.startswith("edgeqa_requests_total{") and 'status="5' in line and 'endpoint="/health"' not in line
    ]
    assert server_errors == []  # /health answered 503 while the model loaded: that one is right


@pytest.mark.slow
def test_a_one_minute_soak_has_no_5xx_no_wrong_answer_and_no_memory_growth(artifact_tiny, real_server):
    expected = expected_answers(artifact_tiny, ORDINARY, NEW_TOKENS, threads=1)
    report = asyncio.run(soak(real_server.url, real_server.proc.pid, expected, 60, 8, NEW_TOKENS))
    assert all(report.requests[kind] > 5 for kind in report.requests), report
    assert report.server_errors == 0 and report.wrong_answers == 0 and report.statuses.get(0, 0) == 0, report
    assert report.rss_growth < 0.05, report
