"""Running the app under uvicorn (plain asyncio and h11), with a draining SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn

from edgeqa.errors import ArtifactError
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


class DrainingServer(uvicorn.Server):
    """The first SIGTERM or Ctrl-C stops taking requests (503) and waits up to `shutdown_timeout`
    for the queued and running ones; a second one stops at once."""

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
        if self.service.draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self.service.draining = True
        logger.info(
            "edgeqa serve: %s, finishing in-flight requests (at most %.0f s)",
            signal.Signals(sig).name,
            self.service.config.shutdown_timeout,
        )
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.service.config.shutdown_timeout
        while self.service.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.config.timeout_graceful_shutdown = max(1, int(deadline - time.monotonic()) + 1)
        self.should_exit = True


def run_server(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C.

    Raises:
        ArtifactError: the model could not be loaded.
    """
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
    DrainingServer(uv_config, service).run()
    if service.engine.state == EngineState.FAILED:
        raise ArtifactError(f"the model could not be loaded: {service.engine.error}")
