"""Running the app under uvicorn (plain asyncio and h11), with a draining SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import time
from types import FrameType

import uvicorn

from edgeqa.errors import ArtifactError, ConfigError
from edgeqa.serve.app import Service, create_app
from edgeqa.serve.config import ServeConfig
from edgeqa.serve.engine import EngineState

logger = logging.getLogger(__name__)


def exposure_warning(config: ServeConfig) -> str | None:
    """A warning when the server listens beyond this machine with no API key."""
    if config.loopback or config.api_key:
        return None
    return (
        f"edgeqa serve listens on {config.host} with no API key: anyone who can reach this address can use it; "
        "pass --api-key or --api-key-file, or bind 127.0.0.1"
    )


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address of `host` (as asyncio's `create_server` binds them), for uvicorn to serve.

    Raises:
        ConfigError: `host` does not resolve, or `host:port` cannot be bound (in use, not this machine's).
    """
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(
            f"cannot resolve --host {host} ({e.strerror}); give an address of this machine, "
            "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None
    sockets: list[socket.socket] = []
    unusable: OSError | None = None  # the last address skipped, for the error if none is usable
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as e:
                if e.errno != errno.EAFNOSUPPORT:
                    raise
                unusable = e  # as asyncio: a family switched off here (IPv6 disabled) is skipped
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio: the IPv4 address gets a socket of its own
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as e:
                if e.errno != errno.EADDRNOTAVAIL:
                    raise
                sockets.pop().close()  # as asyncio: localhost's ::1 where IPv6 is off
                unusable = e
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise ConfigError(_bind_error(host, port, e)) from None
    if not sockets:
        raise ConfigError(_bind_error(host, port, unusable or OSError(errno.EADDRNOTAVAIL, "no address")))
    return sockets


def _bind_error(host: str, port: int, error: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if error.errno == errno.EADDRINUSE:
        return f"{where} is already in use; pick another --port, or stop the program listening there"
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {where}: {host} is not an address of this machine; pass --host 127.0.0.1 "
            "(this machine only) or 0.0.0.0 (every interface)"
        )
    if error.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges); pick another --port"
    return f"cannot listen on {where}: {error.strerror}; check --host and --port"


class DrainingServer(uvicorn.Server):
    """The first SIGTERM or Ctrl-C stops taking requests (503) and waits up to `shutdown_timeout` for the
    queued and running ones; what is still open then gets the same 503 (`ShutdownMiddleware`). A second
    signal of either kind does that at once. Either way the exit code is 0 (no signal is raised again)."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                logger.info("edgeqa serve: listening on http://%s:%d", host, port)
        asyncio.ensure_future(self._watch_load())

    async def _watch_load(self) -> None:
        engine = self.service.engine
        while not engine.ready.is_set():
            await asyncio.sleep(0.05)
        if engine.state == EngineState.FAILED:
            self.should_exit = True
        else:
            logger.info("edgeqa serve: ready")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # never uvicorn's own: it would raise the signal again on the way out (exit code 143, or 1 for Ctrl-C)
        if self._loop is None:
            self.should_exit = True
            return
        name = signal.Signals(sig).name
        if self.service.draining:
            logger.info("edgeqa serve: %s again, stopping now", name)
            self._loop.call_soon_threadsafe(self._stop_now)
            return
        self.service.draining = True
        logger.info(
            "edgeqa serve: %s, finishing in-flight requests (at most %.0f s)",
            name,
            self.service.config.shutdown_timeout,
        )
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.service.config.shutdown_timeout
        while self._open() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._cut_off("--shutdown-timeout reached")
        self.config.timeout_graceful_shutdown = max(1, int(deadline - time.monotonic()) + 1)
        self.should_exit = True

    def _stop_now(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
        self._cut_off("stopping now")
        self.config.timeout_graceful_shutdown = 1
        self.should_exit = True

    def _open(self) -> bool:
        """Whether requests are still queued, decoded or otherwise open (a body still coming, an answer being sent)."""
        return self.service.busy or bool(self._open_tasks())

    def _open_tasks(self) -> list[asyncio.Task]:
        return [task for task in self.server_state.tasks if not task.done()]

    def _cut_off(self, why: str) -> None:
        """Cancel every request still open: `ShutdownMiddleware` answers each with 503 `shutting_down`."""
        still_open = self._open_tasks()
        if still_open:
            logger.info("edgeqa serve: %s, %d request(s) still open get 503 shutting_down", why, len(still_open))
        for task in still_open:
            task.cancel()


def run_server(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C.

    Raises:
        ConfigError: the address cannot be listened on (in use, unknown host, not this machine's).
        ArtifactError: the model could not be loaded.
    """
    sockets = listen(config.host, config.port)
    try:
        warning = exposure_warning(config)
        if warning:
            logger.warning("warning: %s", warning)
        app = create_app(config)
        service: Service = app.state.service
        uv_config = uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=int(config.shutdown_timeout) + 1,
        )
        DrainingServer(uv_config, service).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
    if service.engine.state == EngineState.FAILED:
        raise ArtifactError(f"the model could not be loaded: {service.engine.error}")
