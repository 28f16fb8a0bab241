"""Pure ASGI middleware (no BaseHTTPMiddleware, which would buffer streams and hide disconnects):
API-key checks, request metrics, and the answer to requests that shutting down cuts off."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeqa.serve.config import fold_host
from edgeqa.serve.metrics import Metrics
from edgeqa.serve.protocol import ApiError, shutting_down
from edgeqa.serve.streams import sse

#: Longest wait to hand a cut-off request its answer (a caller that reads nothing must not hold the exit).
CUT_OFF_SEND_S = 1.0


async def send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class ApiKeyMiddleware:
    """Every path but the public ones needs `Authorization: Bearer KEY` or `x-api-key: KEY`."""

    def __init__(self, app: ASGIApp, key: str, public: tuple[str, ...]):
        self.app = app
        self.key = key.encode()
        self.public = public

    def _given(self, scope: Scope) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return value[7:].strip()
            if name == b"x-api-key":
                return value.strip()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        given = self._given(scope)
        if given is not None and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        message = "Invalid API key." if given is not None else "Missing API key: send 'Authorization: Bearer KEY'."
        body = {"error": {"message": message, "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
        await send_json(send, 401, body, {"www-authenticate": "Bearer"})


class HostCheckMiddleware:
    """Requests must call the server by one of its names (their Host header). A web page elsewhere that
    rebinds its own name to 127.0.0.1 (DNS rebinding) then reaches nothing: its requests name it."""

    def __init__(self, app: ASGIApp, names: tuple[str, ...]):
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1").strip()
        # no Host at all (an HTTP/1.0 probe) is no browser's: only a browser can be made to rebind a name
        if scope["type"] != "http" or not given or host_name(given) in self.names:
            await self.app(scope, receive, send)
            return
        message = (  # the names it answers to are not listed: the caller may be the page being kept out
            f"this server does not answer requests that call it {given[:100]!r} (the Host header): call it "
            "localhost or 127.0.0.1, or start it with --allowed-hosts NAME"
        )
        await send_json(send, 400, ApiError(400, message, code="host_not_allowed").body())


def host_name(host: str) -> str:
    """A Host header's name without its port, in lower case: `[::1]:8080` -> `[::1]`, `Localhost.:80` -> `localhost`."""
    name = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.partition(":")[0]
    return fold_host(name)


class MetricsMiddleware:
    """Counts every HTTP request by endpoint and status and times it until its last byte."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.metrics.endpoint(scope["path"])
        started = time.perf_counter()
        status = {"code": 500, "counted": False}

        def count() -> None:
            if not status["counted"]:
                status["counted"] = True
                self.metrics.requests.labels(endpoint, str(status["code"])).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                count()

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if not status["counted"]:  # the caller left mid-response
                status["code"] = status["code"] if status["code"] != 200 else 499
                count()


class ShutdownMiddleware:
    """A request still open when shutting down cuts it off (its task cancelled at --shutdown-timeout or by a
    second signal) gets what new requests get while draining: 503 `shutting_down` with Retry-After, or, in a
    stream already under way, that error as its last event. No traceback: it is no fault."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]):
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = {"start": False, "stream": False, "end": False}

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                sent["start"], sent["stream"] = True, content_type.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                sent["end"] = True
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except asyncio.CancelledError:
            if not self.draining():
                raise
            with contextlib.suppress(Exception):  # the caller may have left, or read nothing
                async with asyncio.timeout(CUT_OFF_SEND_S):
                    await self._answer(send, sent)

    @staticmethod
    async def _answer(send: Send, sent: dict[str, bool]) -> None:
        error = shutting_down()
        if not sent["start"]:
            await send_json(send, error.status, error.body(), error.headers)
        elif sent["stream"] and not sent["end"]:
            await send({"type": "http.response.body", "body": sse(error.body()).encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
