"""Helpers of the server tests: the app in-process over the ASGI transport, a real uvicorn in a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

try:  # the openai client >= 3 is built on httpx2; older ones on httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

from edgeqa.runtime import QAModel
from edgeqa.serve import ServeConfig, create_app

KEY = "sk-test-key"


def in_process(
    artifact: Path, model: QAModel, body: Callable[[Any, Any], Awaitable[None]], load=None, **settings: Any
) -> Any:
    """Run `body(app, http)` against the app (lifespan entered, model ready) with an ASGI httpx client."""
    app = create_app(ServeConfig(artifact=artifact, **settings), load=load or (lambda: model))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            engine = app.state.service.engine
            if load is None:
                for _ in range(200):
                    if engine.ready.is_set():
                        break
                    await asyncio.sleep(0.02)
                assert engine.state == "ready", engine.error
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
                await body(app, http)

    return asyncio.run(main())


async def asgi_call(app: Any, path: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST to `path` as a server would, the caller sending `messages` (then leaving): what the app sent back."""
    body_size = sum(len(m.get("body", b"")) for m in messages) + 1000  # more declared than sent, if it leaves early
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(body_size).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def openai_client(http: Any, key: str = "unused") -> Any:
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url="http://127.0.0.1/v1", api_key=key, http_client=http, max_retries=0)


def metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (all labels) in /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class ServerProcess:
    """`edgeqa serve` on 127.0.0.1:0 in a subprocess; stderr is collected by a thread."""

    def __init__(self, artifact: Path, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "edgeqa.cli", "serve", str(artifact), "--port", "0", "--threads", "1", *args]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[str] = []
        self._port = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._port.wait(90):
            self.stop()
            raise RuntimeError("edgeqa serve did not start:\n" + "".join(self.lines))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("edgeqa serve never became healthy:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                self._port.set()

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def headless_chromium(folder: Path) -> Any:
    """Debian's Chromium, headless, driven by selenium (skips the test where either is missing); quit it after."""
    import shutil

    import pytest

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={folder / 'profile'}",
        "--window-size=900,700",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))


def keep_screenshot(driver: Any, folder: Path, name: str) -> Path:
    """Save the page's screenshot in `folder` (and in $EDGEQA_SCREENSHOT_DIR when set, to look at)."""
    import shutil

    shot = folder / name
    driver.save_screenshot(str(shot))
    if os.environ.get("EDGEQA_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["EDGEQA_SCREENSHOT_DIR"]) / name)
    return shot
