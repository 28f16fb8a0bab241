"""`edgeqa serve` as people run it: a real uvicorn in a subprocess on 127.0.0.1:0. Streaming, the
caller leaving, a full queue, the web page in headless Chromium, and the SIGTERM drain (the last test
of the module's server: it stops it); then shutting down cut short, on servers of their own."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from serve_helpers import ServerProcess, headless_chromium, httpx, keep_screenshot, metric  # noqa: E402

from edgeqa.runtime import QAModel  # noqa: E402

QUESTION = "What color is a banana when overripe?"
LONG = 512  # tokens: min_new_tokens forces the whole length, a few tenths of a second on the test model


@pytest.fixture(scope="module")
def long_artifact(tmp_path_factory: pytest.TempPathFactory, trained_run: Path) -> Path:
    """The tiny memorisation model, whose answers may run to 512 tokens (the facts model stops at 16)."""
    from edgeqa.export import ExportConfig, export_artifact

    out = tmp_path_factory.mktemp("serve-long") / "fp32"
    export_artifact(ExportConfig(checkpoint=str(trained_run / "final"), output=out, parity=False))
    return out


@pytest.fixture(scope="module")
def server(long_artifact):
    process = ServerProcess(
        long_artifact, "--max-batch-size", "2", "--max-queue", "2", "--shutdown-timeout", "20", "--no-verify"
    )
    yield process
    process.stop()


def long_request(stream: bool) -> dict:
    return {"question": QUESTION, "max_new_tokens": LONG, "min_new_tokens": LONG, "stream": stream}


def wait_for(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_streaming_arrives_chunk_by_chunk(server):
    first_seen_running = None
    with httpx.stream("POST", server.url + "/v1/answer", json=long_request(True), timeout=60) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if first_seen_running is None:  # the answer is still being generated when its first piece arrives
                first_seen_running = metric(server.metrics(), "edgeqa_active_rows")
    assert first_seen_running == 1
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert final["answer_tokens"] == LONG and final["finish_reason"] == "length"
    deltas = [json.loads(e)["delta"] for e in events[:-2]]
    assert len(deltas) > 20 and "".join(deltas) == final["answer"]


def test_a_caller_leaving_frees_its_row(server):
    before = server.metrics()
    cancelled, tokens = metric(before, "edgeqa_cancelled_rows_total"), metric(before, "edgeqa_generated_tokens_total")
    # streaming: leave after the first piece
    with httpx.stream("POST", server.url + "/v1/answer", json=long_request(True), timeout=60) as reply:
        for line in reply.iter_lines():
            if line.startswith('data: {"delta"'):
                break
    assert wait_for(lambda: metric(server.metrics(), "edgeqa_cancelled_rows_total") == cancelled + 1)
    # not streaming: leave while the answer is being generated
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(long_request(False)).encode()
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(
            b"POST /v1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert wait_for(lambda: metric(server.metrics(), "edgeqa_active_rows") == 1)
    assert wait_for(lambda: metric(server.metrics(), "edgeqa_cancelled_rows_total") == cancelled + 2)
    after = server.metrics()
    assert metric(after, "edgeqa_active_rows") == 0
    assert metric(after, "edgeqa_generated_tokens_total") - tokens < 2 * LONG, "the rows ran to the end"


def test_a_full_queue_answers_503_with_retry_after(server):
    def post(_: int) -> httpx.Response:
        return httpx.post(server.url + "/v1/answer", json=long_request(False), timeout=60)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(post, range(8)))
    statuses = sorted(r.status_code for r in replies)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
    for reply in replies:
        if reply.status_code == 503:
            assert reply.headers["retry-after"] == "1"
            assert reply.json()["error"]["code"] == "queue_full"
    assert httpx.post(server.url + "/v1/answer", json={"question": QUESTION}, timeout=30).status_code == 200


@pytest.mark.slow
def test_the_page_streams_an_answer_in_a_real_browser(server, long_artifact, tmp_path):
    expected = QAModel.load(long_artifact, threads=1, verify=False).answer(QUESTION).text
    driver = headless_chromium(tmp_path)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        driver.get(server.url + "/")
        info = lambda d: d.find_element(By.ID, "info").get_attribute("textContent")  # noqa: E731 (hidden: no .text)
        WebDriverWait(driver, 20).until(lambda d: "input tokens" in info(d))
        # count the changes to the answer (records, not callbacks, which are batched): streamed text comes in pieces
        driver.execute_script(
            "window.updates = 0; new MutationObserver((records) => { window.updates += records.length; })"
            ".observe(document.getElementById('answer'), {childList: true, characterData: true, subtree: true});"
        )
        driver.find_element(By.ID, "question").send_keys(QUESTION)
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "timings").text)
        assert driver.find_element(By.ID, "answer").text == expected
        assert "tokens" in driver.find_element(By.ID, "timings").text
        assert driver.execute_script("return window.updates") >= 3
        driver.find_element(By.TAG_NAME, "details").click()
        keep_screenshot(driver, tmp_path, "serve-page.png")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


def test_the_page_asks_one_question_at_a_time(server, long_artifact, tmp_path):
    """Enter pressed again while an answer is on its way starts no second request (whose words would mix
    into the first's); the page's Content-Security-Policy lets its own script run, and it does."""
    expected = QAModel.load(long_artifact, threads=1, verify=False).answer(QUESTION).text
    answered = 'edgeqa_requests_total{endpoint="/v1/answer",status="200"}'
    driver = headless_chromium(tmp_path)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        driver.get(server.url + "/")
        info = lambda d: d.find_element(By.ID, "info").get_attribute("textContent")  # noqa: E731
        WebDriverWait(driver, 20).until(lambda d: "input tokens" in info(d))
        before = metric(server.metrics(), answered)
        driver.execute_script(  # three Enters in one tick: the second and third come while the first is asked
            "const box = document.getElementById('question'); box.value = arguments[0];"
            "for (let i = 0; i < 3; i++) box.dispatchEvent(new KeyboardEvent('keydown', "
            "{key: 'Enter', bubbles: true, cancelable: true}));",
            QUESTION,
        )
        WebDriverWait(driver, 30).until(lambda d: "tokens" in d.find_element(By.ID, "timings").text)
        assert driver.find_element(By.ID, "answer").text == expected
        assert wait_for(lambda: metric(server.metrics(), answered) == before + 1)
        time.sleep(0.5)
        assert metric(server.metrics(), answered) == before + 1
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors  # a Content-Security-Policy refusal is one
    finally:
        driver.quit()


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(server):
    lines: list[str] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", server.url + "/v1/answer", json=long_request(True), timeout=60) as reply:
            for line in reply.iter_lines():
                if line:
                    lines.append(line)
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(30)
    server.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: "finishing in-flight requests" in "".join(server.lines), 10)
    try:
        refused = httpx.post(server.url + "/v1/answer", json={"question": QUESTION}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert httpx.get(server.url + "/health", timeout=10).status_code == 503
    except httpx.ConnectError:
        pass  # the in-flight answer finished first and the server already closed its socket: refused too
    reader.join(60)
    assert lines[-1] == "data: [DONE]", lines[-3:]
    assert json.loads(lines[-2][6:])["answer_tokens"] == LONG
    assert server.proc.wait(30) == 0, "".join(server.lines)


# ------------------------------------------------------------------ shutdown, on servers of their own

BEAMS = {"question": QUESTION, "max_new_tokens": 512, "min_new_tokens": 512, "num_beams": 4}  # decoded alone


def held_upload(url: str) -> socket.socket:
    """A connection whose request body never finishes coming: the drain waits for it."""
    host, port = url.removeprefix("http://").split(":")
    raw = socket.create_connection((host, int(port)), timeout=20)
    raw.sendall(b"POST /v1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n" + b'{"question"')
    return raw


def test_the_page_asks_for_the_key_and_says_when_the_server_is_gone(long_artifact, tmp_path):
    expected = QAModel.load(long_artifact, threads=1, verify=False).answer(QUESTION).text
    driver = headless_chromium(tmp_path)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    process = ServerProcess(long_artifact, "--api-key", "sk-page", "--no-verify")
    try:
        driver.get(process.url + "/")
        answer = lambda d: d.find_element(By.ID, "answer")  # noqa: E731
        ask = "const box = document.getElementById('question'); box.value = arguments[0]; box.form.requestSubmit();"
        driver.execute_script(ask, QUESTION)
        WebDriverWait(driver, 20).until(lambda d: "error" in answer(d).get_attribute("class"))
        assert answer(driver).text.startswith("This server needs an API key: enter it under Model and settings")
        assert driver.find_element(By.ID, "settings").get_attribute("open") is not None
        assert driver.switch_to.active_element.get_attribute("id") == "key"  # the key box, shown and focused
        driver.switch_to.active_element.send_keys("sk-page" + Keys.TAB)
        driver.execute_script(ask, QUESTION)
        WebDriverWait(driver, 30).until(lambda d: "tokens" in d.find_element(By.ID, "timings").text)
        assert answer(driver).text == expected and "error" not in answer(driver).get_attribute("class")
        keep_screenshot(driver, tmp_path, "serve-page-key.png")
        process.stop()
        driver.execute_script(ask, QUESTION)
        WebDriverWait(driver, 20).until(lambda d: "error" in answer(d).get_attribute("class"))
        host = process.url.removeprefix("http://")
        assert answer(driver).text == f"Cannot reach the edgeqa server at {host}: is it still running?"
    finally:
        driver.quit()
        process.stop()


@pytest.mark.parametrize("second", ["SIGTERM", "SIGINT"])
def test_a_second_signal_during_the_drain_stops_at_once_and_exits_0(artifact_tiny, second):
    server = ServerProcess(artifact_tiny, "--no-verify", "--shutdown-timeout", "60")
    try:
        with held_upload(server.url) as raw:
            time.sleep(1)  # the request reaches the server
            server.proc.send_signal(signal.SIGTERM)
            assert wait_for(lambda: "finishing in-flight requests" in "".join(server.lines), 10)
            time.sleep(0.3)
            assert server.proc.poll() is None, "the held upload keeps the drain waiting"
            server.proc.send_signal(getattr(signal, second))
            assert server.proc.wait(15) == 0, "".join(server.lines)
            reply = raw.recv(4096)
        assert reply.startswith(b"HTTP/1.1 503") and b"shutting_down" in reply, reply
        assert "Traceback" not in "".join(server.lines) and "ERROR" not in "".join(server.lines)
    finally:
        server.stop()


def test_requests_still_queued_when_the_shutdown_timeout_ends_get_503_shutting_down(artifact_tiny):
    server = ServerProcess(artifact_tiny, "--no-verify", "--shutdown-timeout", "1")
    queued = lambda n: wait_for(lambda: metric(server.metrics(), "edgeqa_queue_depth") >= n)  # noqa: E731
    lines: list[str] = []
    opened = threading.Event()  # the stream's headers arrived: it is queued (the queue depth can't say whose)

    def post(_: int) -> httpx.Response:
        return httpx.post(server.url + "/v1/answer", json=BEAMS, timeout=60)

    def stream() -> None:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=chat, timeout=60) as reply:
            opened.set()
            lines.extend(line for line in reply.iter_lines() if line)

    chat = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 512, "stream": True}
    try:
        with ThreadPoolExecutor(8) as pool:
            replies = [pool.submit(post, i) for i in range(6)]
            assert queued(4)
            streamed = pool.submit(stream)  # the last in the queue
            assert opened.wait(30)
            server.proc.send_signal(signal.SIGTERM)
            statuses = [r.result(60).status_code for r in replies]
            streamed.result(60)
        assert server.proc.wait(30) == 0, "".join(server.lines)
        assert set(statuses) <= {200, 503} and 503 in statuses, statuses
        for reply in (r.result() for r in replies):
            if reply.status_code == 503:
                assert reply.json()["error"]["code"] == "shutting_down" and reply.headers["retry-after"] == "1"
        assert json.loads(lines[-1][6:])["error"]["code"] == "shutting_down", lines[-3:]
        log = "".join(server.lines)
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    finally:
        server.stop()
