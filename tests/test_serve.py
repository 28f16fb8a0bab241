"""`edgeqa serve` in-process: the official openai client over the ASGI transport, for schemas,
errors, auth, CORS and limits; batched answers against sequential ones."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

pytest.importorskip("starlette")
pytest.importorskip("openai")

import openai  # noqa: E402
from serve_helpers import KEY, in_process, metric, openai_client  # noqa: E402

from edgeqa.errors import ConfigError  # noqa: E402
from edgeqa.runtime import QAModel  # noqa: E402
from edgeqa.serve import ServeConfig  # noqa: E402
from edgeqa.serve.protocol import parse_openai  # noqa: E402
from edgeqa.serve.server import exposure_warning  # noqa: E402

QUESTION = "What color is a banana when overripe?"  # a memorised question with a long answer


@pytest.fixture(scope="module")
def model(artifact_fp32) -> QAModel:
    return QAModel.load(artifact_fp32, threads=1)


def chat(question: str = QUESTION, **extra) -> dict:
    return {"model": "anything", "messages": [{"role": "user", "content": question}], **extra}


# ------------------------------------------------------------------ OpenAI schemas


def test_chat_and_completions_answer_like_the_runtime(artifact_fp32, model):
    expected = model.answer(QUESTION, max_new_tokens=12)

    async def body(app, http):
        client = openai_client(http)
        reply = await client.chat.completions.create(
            model="whatever-name",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
            max_tokens=12,
        )
        assert reply.choices[0].message.content == expected.text
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].finish_reason == ("stop" if expected.tokens[-1] == 1 else "length")
        assert reply.usage.prompt_tokens == expected.prompt_tokens
        assert reply.usage.completion_tokens == expected.answer_tokens
        assert reply.usage.total_tokens == expected.prompt_tokens + expected.answer_tokens
        assert reply.model == artifact_fp32.name and reply.id.startswith("chatcmpl-")
        text = await client.completions.create(model="x", prompt=QUESTION, max_tokens=12)
        assert text.choices[0].text == expected.text and text.object == "text_completion"
        listed = await client.models.list()
        assert [m.id for m in listed.data] == [artifact_fp32.name]

    in_process(artifact_fp32, model, body)


def test_streaming_chunks_as_openai_sends_them(artifact_fp32, model):
    expected = model.answer(QUESTION, max_new_tokens=12)

    async def body(app, http):
        client = openai_client(http)
        stream = await client.chat.completions.create(
            **chat(max_tokens=12), stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert len({c.id for c in chunks}) == 1
        assert chunks[0].choices[0].delta.role == "assistant"
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert content == expected.text
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected.answer_tokens
        raw = await http.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 12, "stream": True})
        events = [line for line in raw.text.split("\n\n") if line]
        assert events[-1] == "data: [DONE]"
        pieces = [json.loads(e[6:]) for e in events[:-1]]
        assert "".join(p["choices"][0]["text"] for p in pieces) == expected.text
        assert all(p["object"] == "text_completion" for p in pieces)

    in_process(artifact_fp32, model, body)


def test_stop_strings_end_the_answer_and_are_never_streamed(artifact_fp32, model):
    full = model.answer(QUESTION, max_new_tokens=16).text
    assert len(full) >= 3, full  # e.g. "Apia": the stop string "ia" leaves "Ap"
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]  # verbatim, as OpenAI cuts

    async def body(app, http):
        client = openai_client(http)
        reply = await client.chat.completions.create(**chat(max_tokens=16), stop=[stop])
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == "stop"
        stream = await client.chat.completions.create(**chat(max_tokens=16), stop=stop, stream=True)
        content = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert content == expected

    in_process(artifact_fp32, model, body)


def test_n_above_one_and_bad_fields_are_refused_with_400(artifact_fp32, model):
    async def body(app, http):
        client = openai_client(http)
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(**chat(), n=2)
        assert refused.value.status_code == 400 and refused.value.body["param"] == "n"

    in_process(artifact_fp32, model, body)


def test_max_tokens_over_the_cap_is_refused_naming_it(model):
    from edgeqa.serve.protocol import ApiError, Caps

    limit = model.manifest.max_answer_tokens
    with pytest.raises(ApiError) as over:
        parse_openai(chat(max_tokens=10**6), model, chat=True)
    assert over.value.code == "over_cap" and over.value.param == "max_tokens" and str(limit) in over.value.message
    assert parse_openai(chat(max_tokens=limit), model, chat=True).options.max_new_tokens == limit
    assert parse_openai(chat(max_tokens=7), model, chat=True).options.max_new_tokens == 7
    with pytest.raises(ApiError, match="--max-new-tokens"):
        parse_openai(chat(max_tokens=9), model, chat=True, caps=Caps.of(model, max_new_tokens=8))
    sampled = parse_openai(chat(temperature=0.7, top_p=0.9, seed=3), model, chat=True).options
    assert (sampled.do_sample, sampled.temperature, sampled.top_p, sampled.seed) == (True, 0.7, 0.9, 3)
    assert parse_openai(chat(temperature=0), model, chat=True).options.do_sample is False


def test_request_bounds_are_refused_at_their_edge_naming_the_field(model):
    from edgeqa.serve.protocol import MAX_DEPTH, MAX_LIST, MAX_STOP, ApiError, Caps, parse_body, parse_native

    def refused(call, *args, **kwargs) -> ApiError:
        with pytest.raises(ApiError) as caught:
            call(*args, **kwargs)
        return caught.value

    nested = lambda depth: ("[" * (depth - 1) + "]" * (depth - 1)).join(['{"question": "a", "x": ', "}"])  # noqa: E731
    assert parse_body(nested(MAX_DEPTH).encode())["question"] == "a"
    assert refused(parse_body, nested(MAX_DEPTH + 1).encode()).code == "too_deep"
    brackets = json.dumps({"question": "[" * 50 + "{" * 50 + "?"}).encode()  # in a string: text, not nesting
    assert parse_body(brackets)["question"].startswith("[[[")
    assert refused(parse_native, {"questions": ["a", "b"], "stream": True}, model).param == "stream"
    assert parse_native({"questions": ["a"], "stream": True}, model).stream
    limit = model.manifest.max_answer_tokens
    generous = Caps.of(model, max_new_tokens=limit * 8)  # a --max-new-tokens above the artifact's limit
    assert generous.max_new_tokens == limit
    over = refused(parse_openai, chat(max_tokens=limit + 1), model, chat=True, caps=generous)
    assert (over.code, over.param) == ("over_cap", "max_tokens")
    messages = [{"role": "user", "content": "a"}] * (MAX_LIST + 1)
    assert refused(parse_openai, {"messages": messages}, model, chat=True).param == "messages"
    assert parse_openai({"messages": messages[:MAX_LIST]}, model, chat=True).question == "a"
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}] * (MAX_LIST + 1)}]
    assert refused(parse_openai, {"messages": parts}, model, chat=True).param == "messages[0]"
    assert refused(parse_openai, chat(stop=["x"] * (MAX_STOP + 1)), model, chat=True).param == "stop"
    assert parse_openai(chat(stop=["x"] * MAX_STOP), model, chat=True).stop == ("x",) * MAX_STOP


# ------------------------------------------------------------------ bad input: 4xx JSON, never 500


BAD_BODIES = [
    (b'{"messages": [', 400, None),
    (b"\xff\xfe not utf-8", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"messages": "hello"}).encode(), 400, "messages"),
    (json.dumps({"messages": []}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, "messages[0]"),
    (json.dumps({"messages": [{"role": "user", "content": "   "}]}).encode(), 400, "messages[0].content"),
    (json.dumps({"messages": [{"role": "user", "content": 42}]}).encode(), 400, "messages[0]"),
    (json.dumps({"messages": [{"role": "system", "content": "only a system message"}]}).encode(), 400, "messages"),
    (json.dumps(chat("what\u0000is this")).encode(), 400, "messages[0].content"),
    (json.dumps(chat(max_tokens="5")).encode(), 400, "max_tokens"),
    (json.dumps(chat(max_tokens=0)).encode(), 400, "max_tokens"),
    (json.dumps(chat(temperature="hot")).encode(), 400, "temperature"),
    (json.dumps(chat(temperature=5)).encode(), 400, "temperature"),
    (json.dumps(chat(top_p=0)).encode(), 400, "top_p"),
    (json.dumps(chat(stream="yes")).encode(), 400, "stream"),
    (json.dumps(chat(stop=[1, 2])).encode(), 400, "stop"),
    (json.dumps(chat(seed=1.5)).encode(), 400, "seed"),
    (json.dumps(chat("word " * 20_000)).encode(), 400, "messages"),  # 100,000 characters: too long
]


def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(artifact_fp32, model):
    async def body(app, http):
        for raw, status, param in BAD_BODIES:
            reply = await http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
            assert reply.status_code == status, (raw[:60], reply.text)
            error = reply.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], raw[:60]
            assert error["param"] == param, (raw[:60], error)
        long = (await http.post("/v1/chat/completions", json=chat("word " * 20_000))).json()["error"]
        assert long["code"] == "context_length_exceeded" and str(model.manifest.max_input_tokens) in long["message"]
        native_bad = [
            ({"question": ""}, "question"),
            ({"question": 5}, "question"),
            ({"questions": []}, "questions"),
            ({"question": "a", "questions": ["b"]}, "question"),
            ({"question": "a", "num_beams": "two"}, "num_beams"),
            ({"question": "a", "temperature": -1, "do_sample": True}, "temperature"),
            ({"question": "a", "colour": "red"}, "colour"),
            ({"question": "a\u0000b"}, "question"),
        ]
        for request, param in native_bad:
            reply = await http.post("/v1/answer", json=request)
            assert reply.status_code == 400 and reply.json()["error"]["message"], (request, reply.text)
            assert reply.json()["error"]["param"] == param, (request, reply.text)
        too_big = await http.post("/v1/answer", content=b'{"question": "' + b"a" * (1 << 20) + b'"}')
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
        missing = await http.get("/v2/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
        assert (await http.get("/v1/answer")).status_code == 405
        ok = await http.post("/v1/chat/completions", json=chat(max_tokens=4))
        assert ok.status_code == 200
        metrics = (await http.get("/metrics")).text
        assert metric(metrics, 'edgeqa_requests_total{endpoint="/v1/chat/completions",status="500"}') == 0
        assert (
            metric(metrics, 'edgeqa_requests_total{endpoint="/v1/chat/completions",status="400"}')
            == len(BAD_BODIES) + 1
        )

    in_process(artifact_fp32, model, body)


def test_native_answer_truncates_long_questions_and_reports_timings(artifact_fp32, model):
    async def body(app, http):
        long = await http.post("/v1/answer", json={"question": "word " * 20_000, "max_new_tokens": 4})
        assert long.status_code == 200, long.text
        row = long.json()
        assert row["truncated"] is True and row["prompt_tokens"] == model.manifest.max_input_tokens
        short = (await http.post("/v1/answer", json={"question": QUESTION})).json()
        assert short["truncated"] is False and short["answer"] == model.answer(QUESTION).text
        assert all(short[k] >= 0 for k in ("queue_ms", "encode_ms", "decode_ms", "generate_ms"))
        assert short["finish_reason"] in ("stop", "length") and short["answer_tokens"] == len(short["tokens"])
        many = (
            await http.post("/v1/answer", json={"questions": [QUESTION, "What is AI?"], "max_new_tokens": 6})
        ).json()
        assert [a["question"] for a in many["answers"]] == [QUESTION, "What is AI?"]
        streamed = await http.post("/v1/answer", json={"question": QUESTION, "stream": True})
        events = [json.loads(e[6:]) for e in streamed.text.split("\n\n") if e.startswith("data: {")]
        assert "".join(e["delta"] for e in events[:-1]) == events[-1]["answer"] == short["answer"]

    in_process(artifact_fp32, model, body)


# ------------------------------------------------------------------ auth, CORS, health


def test_api_key_is_checked_everywhere_but_health(artifact_fp32, model):
    async def body(app, http):
        for path in ("/v1/models", "/metrics", "/info"):
            missing = await http.get(path)
            assert missing.status_code == 401, path
            assert missing.json()["error"]["type"] == "authentication_error"
        wrong = await http.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        for near in ("", KEY[:-1], KEY[:1], KEY + "x"):  # empty, a prefix, a longer key: all refused
            for header in ({"Authorization": f"Bearer {near}"}, {"x-api-key": near}):
                assert (await http.get("/v1/models", headers=header)).status_code == 401, (near, header)
        assert (await http.post("/v1/answer", json={"question": QUESTION})).status_code == 401
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})).status_code == 200
        assert (await http.get("/v1/models", headers={"x-api-key": KEY})).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            await openai_client(http, "sk-wrong").chat.completions.create(**chat())
        reply = await openai_client(http, KEY).chat.completions.create(**chat(max_tokens=4))
        assert reply.choices[0].message.content

    in_process(artifact_fp32, model, body, api_key=KEY)


def test_cors_is_off_unless_origins_are_given(artifact_fp32, model):
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}

    async def off(app, http):
        reply = await http.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in reply.headers
        reply = await http.get("/v1/models", headers={"Origin": "http://app.example"})
        assert "access-control-allow-origin" not in reply.headers

    async def on(app, http):
        allowed = await http.options(
            "/v1/chat/completions", headers={**preflight, "Access-Control-Request-Headers": "authorization"}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        other = await http.options("/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        got = await http.get("/v1/models", headers={"Origin": "http://app.example", "x-api-key": KEY})
        assert got.status_code == 200 and got.headers["access-control-allow-origin"] == "http://app.example"

    in_process(artifact_fp32, model, off)
    in_process(artifact_fp32, model, on, cors_origins=("http://app.example",), api_key=KEY)


def test_health_is_503_while_the_model_loads(artifact_fp32, model):
    release = threading.Event()

    def slow_load() -> QAModel:
        release.wait(30)
        return model

    async def body(app, http):
        loading = await http.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        refused = await http.post("/v1/chat/completions", json=chat())
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        release.set()
        for _ in range(300):
            if (await http.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert (await http.get("/health")).json() == {"status": "ok"}

    in_process(artifact_fp32, model, body, load=slow_load)


def test_page_is_self_contained(artifact_fp32, model):
    async def body(app, http):
        page = await http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<script" in page.text and "http://" not in page.text and "https://" not in page.text
        policy = page.headers["content-security-policy"]
        assert policy.startswith("default-src 'none'; script-src 'sha256-") and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy and "connect-src 'self'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        info = (await http.get("/info")).json()
        assert info["summary"] == model.manifest.describe()

    async def no_page(app, http):
        assert (await http.get("/")).status_code == 404

    in_process(artifact_fp32, model, body)
    in_process(artifact_fp32, model, no_page, ui=False)


def test_a_loopback_server_answers_only_to_its_own_names(artifact_fp32, model):
    """A web page elsewhere that rebinds its name to 127.0.0.1 (DNS rebinding) sends its own name as Host."""

    def host(name):
        return {"Host": name}

    async def loopback(app, http):
        for name in ("127.0.0.1", "localhost:8080", "[::1]:8080", "LOCALHOST", "office.lan"):
            assert (await http.get("/v1/models", headers=host(name))).status_code == 200, name
        for name in ("attacker.example", "127.0.0.1.attacker.example:8080", "localhost.evil"):
            refused = await http.post("/v1/answer", json={"question": QUESTION}, headers=host(name))
            assert refused.status_code == 400, name
            error = refused.json()["error"]
            assert error["code"] == "host_not_allowed" and "--allowed-hosts" in error["message"], error
            assert "office.lan" not in error["message"]  # a rebinding page reads this: it learns no names
        assert (await http.get("/", headers=host("attacker.example"))).status_code == 400  # the page too

    async def any_name(app, http):
        assert (await http.get("/v1/models", headers=host("attacker.example"))).status_code == 200

    in_process(artifact_fp32, model, loopback, allowed_hosts=("Office.Lan.",))
    in_process(artifact_fp32, model, any_name, allowed_hosts=("*",))
    in_process(artifact_fp32, model, any_name, host="0.0.0.0", api_key=None)
    assert ServeConfig(artifact="x", host="0.0.0.0").host_names is None  # type: ignore[arg-type]
    assert ServeConfig(artifact="x", host="0.0.0.0", allowed_hosts=("a.lan",)).host_names == (  # type: ignore[arg-type]
        "localhost", "127.0.0.1", "[::1]", "0.0.0.0", "a.lan"
    )
    for bad in ("http://office.lan", "office.lan:8080", "a b", ""):
        with pytest.raises(ConfigError, match=r"allowed_hosts takes host names .*\(--allowed-hosts\)"):
            ServeConfig(artifact="x", allowed_hosts=(bad,))  # type: ignore[arg-type]


def test_settings_are_validated_and_exposure_is_warned():
    with pytest.raises(ConfigError, match="max_batch_size"):
        ServeConfig(artifact="x", max_batch_size=0)  # type: ignore[arg-type]
    assert exposure_warning(ServeConfig(artifact="x")) is None  # type: ignore[arg-type]
    assert exposure_warning(ServeConfig(artifact="x", host="0.0.0.0", api_key=KEY)) is None  # type: ignore[arg-type]
    assert "--api-key" in exposure_warning(ServeConfig(artifact="x", host="0.0.0.0"))  # type: ignore[arg-type]


# ------------------------------------------------------------------ batching


def test_batched_answers_equal_sequential_ones(artifact_fp32, model, questions):
    mixed = questions[:28] + questions[-4:]  # 32 questions of mixed lengths, the last four truncated
    expected = [model.answer(q, max_new_tokens=16) for q in mixed]
    sampled_alone = model.answer(mixed[1], max_new_tokens=12, do_sample=True, temperature=0.8, seed=7)
    beams_alone = model.answer(mixed[2], max_new_tokens=12, num_beams=3)

    async def body(app, http):
        requests = [http.post("/v1/answer", json={"question": q, "max_new_tokens": 16}) for q in mixed]
        requests.append(
            http.post(
                "/v1/answer",
                json={"question": mixed[1], "max_new_tokens": 12, "do_sample": True, "temperature": 0.8, "seed": 7},
            )
        )
        requests.append(http.post("/v1/answer", json={"question": mixed[2], "max_new_tokens": 12, "num_beams": 3}))
        streams = [
            http.post("/v1/answer", json={"question": q, "max_new_tokens": 16, "stream": True}) for q in mixed[3:6]
        ]
        replies = await asyncio.gather(*requests, *streams)
        streamed = [json.loads(r.text.split("\n\n")[-3][6:]) for r in replies[34:]]
        assert [s["tokens"] for s in streamed] == [a.tokens for a in expected[3:6]]  # streaming rows batch too
        rows = [r.json() for r in replies[:34]]
        assert [r["tokens"] for r in rows[:32]] == [a.tokens for a in expected]
        assert [r["answer"] for r in rows[:32]] == [a.text for a in expected]
        assert [r["truncated"] for r in rows[:32]] == [False] * 28 + [True] * 4
        assert rows[32]["tokens"] == sampled_alone.tokens  # a seeded sample does not depend on its neighbours
        assert rows[33]["tokens"] == beams_alone.tokens
        metrics = (await http.get("/metrics")).text
        batches = metric(metrics, "edgeqa_batch_size_count") - 1  # the warm-up is one
        assert 5 <= batches < 37, f"{batches} batches for 37 requests: they were not batched"
        assert metric(metrics, "edgeqa_generated_tokens_total") >= sum(a.answer_tokens for a in expected)

    in_process(artifact_fp32, model, body, max_batch_size=8, batch_wait_ms=50)


# ------------------------------------------------------------------ the command


def test_serve_command_passes_its_flags(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import edgeqa.serve.server
    from edgeqa.cli import app

    seen = []
    monkeypatch.setattr(edgeqa.serve.server, "run_server", seen.append)
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")
    args = ["serve", str(tmp_path), "--port", "0", "--max-batch-size", "4", "--batch-wait-ms", "2"]
    args += ["--api-key-file", str(key_file), "--cors-origins", "http://a.example,http://b.example", "--no-ui"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [config] = seen
    assert (config.port, config.max_batch_size, config.batch_wait_ms, config.api_key) == (0, 4, 2.0, KEY)
    assert config.cors_origins == ("http://a.example", "http://b.example") and config.ui is False
    assert config.host == "127.0.0.1" and config.max_queue == 64 and config.shutdown_timeout == 30.0
    both = CliRunner().invoke(app, ["serve", str(tmp_path), "--api-key", "k", "--api-key-file", str(key_file)])
    assert both.exit_code == 1 and "not both" in both.output
    bad = CliRunner().invoke(app, ["serve", str(tmp_path), "--max-batch-size", "0"])
    assert bad.exit_code == 1 and "max_batch_size" in bad.output


# ------------------------------------------------------------------ streams and rows, piece by piece


def _job_with_events(*events):
    from edgeqa.runtime import GenerationOptions, Row
    from edgeqa.serve.jobs import Job

    job = Job(Row([1, 2, 3], GenerationOptions()))

    async def feed():
        job.bind(asyncio.get_running_loop(), 0.0)
        for event in events:
            job.events.put_nowait(event)
        return job

    return feed


def test_quiet_streams_get_ping_comments_and_failures_an_error_event():
    from types import SimpleNamespace

    from edgeqa.serve.jobs import Delta, Failed
    from edgeqa.serve.streams import PING, events, openai_stream

    async def main():
        job = await _job_with_events()()
        quiet = events(job, keepalive_s=0.01)
        assert await quiet.__anext__() == PING and await quiet.__anext__() == PING
        failing = await _job_with_events(Delta("Par"), Failed("generation failed: boom"))()
        service = SimpleNamespace(model_id="m", config=SimpleNamespace(keepalive_s=5))
        parsed = SimpleNamespace(include_usage=False)
        return [chunk async for chunk in openai_stream(service, failing, parsed, chat=True)]

    chunks = asyncio.run(main())
    bodies = [json.loads(c[6:]) for c in chunks]
    assert bodies[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert bodies[1]["choices"][0]["delta"] == {"content": "Par"}
    assert bodies[-1] == {
        "error": {"message": "generation failed: boom", "type": "server_error", "param": None, "code": None}
    }
    assert "data: [DONE]\n\n" not in chunks


def test_text_that_may_begin_a_stop_string_is_held_back():
    from edgeqa.runtime.text import held_back, stop_at

    assert held_back("The capital is Par", ("Paris",)) == 3
    assert held_back("The capital is P", ("Paris", "is Pe")) == 4
    assert held_back("The capital", ("Paris",)) == 0
    assert stop_at("It is Paris, France", ("France", "Paris")) == 6
    assert stop_at("It is Rome", ("Paris",)) is None


def test_a_lone_caller_does_not_wait_for_a_batch_but_a_crowd_does():
    """--batch-wait-ms gathers concurrent callers; one caller alone must not pay it on every request."""
    from edgeqa.runtime import GenerationOptions, Row
    from edgeqa.serve.engine import Engine
    from edgeqa.serve.jobs import Job

    class Recording(threading.Condition):
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float | None] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(timeout)
            return False

    engine = Engine(lambda: None, max_batch_size=8, batch_wait_ms=1000)  # type: ignore[arg-type,return-value]
    engine._cond = Recording()
    alone = Job(Row([5, 1], GenerationOptions()))
    engine._pending.append(alone)
    assert engine._take() == [alone] and engine._cond.waits == []  # after a batch of one: no wait
    crowd = [Job(Row([5, 1], GenerationOptions())) for _ in range(2)]
    engine._pending.extend(crowd)
    assert engine._take() == crowd and engine._cond.waits and 0 < engine._cond.waits[0] <= 1.0
    engine._cond.waits.clear()
    engine._pending.append(alone)  # the last batch had two rows: others are asking, so it waits
    assert engine._take() == [alone] and engine._cond.waits


def test_a_request_cancelled_while_its_batch_waits_leaves_the_batcher_waiting():
    """Found by the soak: the only queued request leaving during --batch-wait-ms killed the inference thread."""
    from edgeqa.runtime import GenerationOptions, Row
    from edgeqa.serve.engine import Engine
    from edgeqa.serve.jobs import Job

    engine = Engine(lambda: None, max_batch_size=8, batch_wait_ms=50)  # type: ignore[arg-type,return-value]
    gone, later = Job(Row([5, 1], GenerationOptions())), Job(Row([6, 1], GenerationOptions()))

    class Leaving(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            if gone in engine._pending:
                engine._pending.remove(gone)  # its caller disconnected (what `Engine.cancel` does)
            elif timeout is None and not engine._pending:
                engine._pending.append(later)
            return True

    engine._cond = Leaving()
    engine._last_rows = 2  # others have been asking: it waits for company
    engine._pending.append(gone)
    assert engine._take() == [later]


# ------------------------------------------------------------------ settings and start-up failures


def test_a_bad_setting_names_its_flag_and_value_and_never_the_api_key(tmp_path):
    from typer.testing import CliRunner

    from edgeqa.cli import app

    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--api-key-file", str(key_file), "--max-queue", "0"])
    assert result.exit_code == 1 and KEY not in result.output
    assert result.output.strip().splitlines() == ["error: max_queue must be at least 1, got 0 (--max-queue)"]
    with pytest.raises(ConfigError) as refused:
        ServeConfig(artifact="x", api_key=KEY, port=70000)  # type: ignore[arg-type]
    assert KEY not in str(refused.value) and "got 70000 (--port)" in str(refused.value)


def test_the_api_key_is_read_as_the_cli_reads_it_by_programs_too(tmp_path):
    from edgeqa.serve.config import resolve_api_key

    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")
    environ = {"EDGEQA_API_KEY": "from-env"}
    assert resolve_api_key(None, None, environ) == "from-env"
    assert resolve_api_key("given", None, environ) == "given"
    assert resolve_api_key(None, key_file, environ) == f"{KEY}\n"
    assert resolve_api_key(None, None, {}) is None
    with pytest.raises(ConfigError, match="give --api-key or --api-key-file, not both"):
        resolve_api_key("given", key_file, environ)
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        resolve_api_key(None, tmp_path / "missing", environ)


def test_an_api_key_is_stripped_from_every_source_and_a_blank_one_refused(artifact_tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import edgeqa.serve.server
    from edgeqa.cli import app

    seen = []
    monkeypatch.setattr(edgeqa.serve.server, "run_server", seen.append)
    runner = CliRunner()
    assert runner.invoke(app, ["serve", str(tmp_path), "--api-key", f" {KEY} "]).exit_code == 0
    assert runner.invoke(app, ["serve", str(tmp_path)], env={"EDGEQA_API_KEY": f"{KEY}\r"}).exit_code == 0
    assert [config.api_key for config in seen] == [KEY, KEY]
    for blank in (
        runner.invoke(app, ["serve", str(tmp_path), "--api-key", " \t"]),
        runner.invoke(app, ["serve", str(tmp_path)], env={"EDGEQA_API_KEY": ""}),  # EDGEQA_API_KEY=$UNSET
    ):
        assert blank.exit_code == 1 and blank.output.strip().splitlines() == [
            "error: api_key must not be empty (--api-key, --api-key-file or EDGEQA_API_KEY)"
        ]

    async def body(app, http):
        headers = {"Authorization": f"Bearer {KEY}"}
        assert (await http.get("/v1/models", headers=headers)).status_code == 200
        assert (await http.get("/v1/models", headers={"x-api-key": f" {KEY}\t"})).status_code == 200
        assert (await http.get("/v1/models")).status_code == 401

    in_process(artifact_tiny, QAModel.load(artifact_tiny, threads=1), body, api_key=f"{KEY} \r\n")


def test_an_address_of_a_name_that_is_not_this_machines_is_skipped_as_asyncio_skips_it(monkeypatch):
    """localhost resolves to ::1 too where IPv6 is switched off (containers): the name is served on the
    addresses that work, and refused only when none does."""
    import socket

    from edgeqa.serve.server import listen

    both = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, 0)) for host in ("192.0.2.1", "127.0.0.1")]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: both)
    [sock] = listen("localhost", 0)
    with sock:
        assert sock.getsockname()[0] == "127.0.0.1"
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: both[:1])
    with pytest.raises(ConfigError, match="cannot listen on localhost:0: localhost is not an address of this machine"):
        listen("localhost", 0)


def test_a_busy_port_or_an_unknown_host_is_one_error_line_and_exit_code_1(artifact_tiny):
    import socket

    from typer.testing import CliRunner

    from edgeqa.cli import app

    runner = CliRunner()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = runner.invoke(app, ["serve", str(artifact_tiny), "--port", str(port), "--no-verify"])
    assert taken.exit_code == 1, taken.output
    assert taken.output.strip().splitlines() == [
        f"error: 127.0.0.1:{port} is already in use; pick another --port, or stop the program listening there"
    ]
    unknown = runner.invoke(app, ["serve", str(artifact_tiny), "--host", "no-such-host.invalid", "--no-verify"])
    assert unknown.exit_code == 1, unknown.output
    [line] = unknown.output.strip().splitlines()
    assert line.startswith("error: cannot resolve --host no-such-host.invalid") and "127.0.0.1" in line
    elsewhere = runner.invoke(app, ["serve", str(artifact_tiny), "--host", "192.0.2.1", "--api-key", "k"])
    assert elsewhere.exit_code == 1, elsewhere.output
    [line] = elsewhere.output.strip().splitlines()
    assert line.startswith("error: cannot listen on 192.0.2.1:8080") and "--host" in line
