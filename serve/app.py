"""The Starlette app: OpenAI-compatible endpoints, edgeqa's /v1/answer, /health, /metrics and the page."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from anyio import to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgeqa.documents.query import Index
from edgeqa.documents.reader import warn_if_sized_for_another
from edgeqa.errors import InputError
from edgeqa.manifest import Manifest
from edgeqa.runtime import GenerationOptions, QAModel, Row
from edgeqa.serve.config import ServeConfig
from edgeqa.serve.engine import Engine, EngineState, QueueFull
from edgeqa.serve.jobs import Job
from edgeqa.serve.metrics import Metrics
from edgeqa.serve.middleware import ApiKeyMiddleware, HostCheckMiddleware, MetricsMiddleware, ShutdownMiddleware
from edgeqa.serve.page import page
from edgeqa.serve.protocol import (
    ApiError,
    Caps,
    parse_body,
    parse_native,
    parse_openai,
    shutting_down,
    unavailable,
)
from edgeqa.serve.reading import answer_body, openai_from_index, read_index
from edgeqa.serve.streams import EventStream, native_stream, openai_response, openai_stream, wait_all

logger = logging.getLogger(__name__)


class Service:
    """What the endpoints share: the config, the engine, the metrics, the shutdown state."""

    def __init__(
        self, config: ServeConfig, engine: Engine, metrics: Metrics, manifest: Manifest, index: Index | None = None
    ):
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.manifest = manifest
        self.index = index
        self.model_id = config.artifact.resolve().name or "edgeqa"
        self.draining = False

    @property
    def busy(self) -> bool:
        return self.engine.queue_depth > 0 or self.engine.active_rows > 0

    def model(self) -> QAModel:
        """The loaded model, or 503 while loading or shutting down."""
        if self.draining:
            raise shutting_down()
        if self.engine.state != EngineState.READY or self.engine.model is None:
            raise unavailable(f"the model is {self.engine.state}; retry shortly", f"model_{self.engine.state}")
        return self.engine.model

    def caps(self, model: QAModel) -> Caps:
        """What one request may ask: the server's caps within the artifact's limits."""
        return Caps.of(model, self.config.max_new_tokens, self.config.max_beams)

    async def read_json(self, request: Request) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        too_large = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return parse_body(bytes(body))

    async def jobs(
        self,
        model: QAModel,
        questions: list[str],
        opts: GenerationOptions,
        stream: bool = False,
        stop: tuple[str, ...] = (),
        context: str | None = None,
    ) -> list[Job]:
        """A job for each question, read from `context` when given; tokenized off the event loop (a
        question of up to --max-body-bytes takes seconds, and every other caller would wait).

        Raises:
            InputError: a question with the context is over the input limit (400).
        """

        def encode() -> tuple[list[tuple[list[int], bool]], float]:
            started = time.perf_counter()
            encoded = model.tokenizer.encode_checked(questions, [context] * len(questions))
            return encoded, (time.perf_counter() - started) * 1000 / len(questions)

        encoded, each_ms = await to_thread.run_sync(encode)
        return [
            Job(Row(ids, opts, stop=stop, stream=stream), truncated=cut, tokenize_ms=each_ms) for ids, cut in encoded
        ]

    def submit(self, jobs: list[Job]) -> None:
        try:
            self.engine.submit(jobs)
        except QueueFull as e:
            raise unavailable(str(e), "queue_full") from None
        finally:
            self.metrics.queue_depth.set(self.engine.queue_depth)


async def openai_endpoint(request: Request, chat: bool) -> Response:
    service: Service = request.app.state.service
    model = service.model()
    parsed = parse_openai(await service.read_json(request), model, chat, service.caps(model))
    if service.index is not None and parsed.context is None:
        return await openai_from_index(request, service, service.index, model, parsed, chat)
    [job] = await service.jobs(
        model, [parsed.question], parsed.options, stream=parsed.stream, stop=parsed.stop, context=parsed.context
    )
    if job.truncated:
        limit = model.manifest.max_input_tokens
        raise ApiError(
            400,
            f"the question is longer than the model's {limit} input tokens; shorten it "
            "(edgeqa's /v1/answer truncates instead)",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    service.submit([job])
    if parsed.stream:
        return EventStream(openai_stream(service, job, parsed, chat), service.engine, [job])
    return await openai_response(request, service, job, chat)


async def chat_completions(request: Request) -> Response:
    return await openai_endpoint(request, chat=True)


async def completions(request: Request) -> Response:
    return await openai_endpoint(request, chat=False)


async def answer(request: Request) -> Response:
    service: Service = request.app.state.service
    model = service.model()
    data = await service.read_json(request)
    parsed = parse_native(data, model, service.caps(model))
    questions, opts, stream = parsed.questions, parsed.options, parsed.stream
    from_index = service.index is not None and parsed.context is None
    check_queue_share(len(questions), service.config, from_index)
    if from_index:
        if stream:
            raise ApiError(400, "'stream' does not work with answers from the index: leave it out", param="stream")
        read = await read_index(request, service, service.index, model, questions, opts)
        if read is None:
            return Response(status_code=499)
        bodies = [answer_body(a) for a in read]
        return JSONResponse(bodies[0] if "question" in data else {"answers": bodies})
    jobs = await service.jobs(model, questions, opts, stream=stream, context=parsed.context)
    service.submit(jobs)
    if stream:
        return EventStream(native_stream(service, jobs[0]), service.engine, jobs)
    results = await wait_all(request, service.engine, jobs)
    if results is None:
        return Response(status_code=499)
    rows = [{"question": q, **r.to_dict()} for q, r in zip(questions, results, strict=True)]
    return JSONResponse(rows[0] if "question" in data else {"answers": rows})


def check_queue_share(questions: int, config: ServeConfig, from_index: bool) -> None:
    """A 400 (`over_cap`) for a request that could never fit the queue, which would otherwise be a 503 at
    every retry: a question takes one place, or `k` read from the index."""
    places = config.k if from_index else 1
    most = config.max_queue // places
    if questions > most:
        each = f" (each is read from {places} passages)" if from_index else ""
        raise ApiError(
            400,
            f"'questions' has {questions} questions; at most {most} a request{each}: send them in smaller requests",
            param="questions",
            code="over_cap",
        )


async def health(request: Request) -> Response:
    service: Service = request.app.state.service
    state = "draining" if service.draining else service.engine.state
    body: dict[str, Any] = {"status": "ok" if state == EngineState.READY else state}
    if service.engine.error:
        body["error"] = service.engine.error
    return JSONResponse(body, status_code=200 if state == EngineState.READY else 503)


async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    service.metrics.queue_depth.set(service.engine.queue_depth)
    service.metrics.active_rows.set(service.engine.active_rows)
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def models(request: Request) -> Response:
    service: Service = request.app.state.service
    card = {"id": service.model_id, "object": "model", "created": 0, "owned_by": "edgeqa"}
    return JSONResponse({"object": "list", "data": [card]})


async def info(request: Request) -> Response:
    service: Service = request.app.state.service
    manifest = service.manifest
    return JSONResponse(
        {
            "id": service.model_id,
            "status": service.engine.state,
            "summary": manifest.describe(),
            "max_input_tokens": manifest.max_input_tokens,
            "max_answer_tokens": manifest.max_answer_tokens,
            "max_batch_size": service.config.max_batch_size,
            "index": None
            if service.index is None
            else {
                "path": str(service.index.path),
                "k": service.config.k,
                "retrieval_weight": service.config.retrieval_weight,
                "passages": service.index.info.passages,
            },
        }
    )


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    body = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type=kind).body()
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def input_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(ApiError(400, str(exc)).body(), status_code=400)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The caller left while sending its body: counted as every caller that leaves (499), nobody to answer."""
    return Response(status_code=499)


async def server_error(request: Request, exc: Exception) -> Response:
    logger.exception("edgeqa serve: unexpected error on %s", request.url.path, exc_info=exc)
    return JSONResponse(ApiError(500, "internal server error", type="server_error").body(), status_code=500)


def create_app(config: ServeConfig, load: Callable[[], QAModel] | None = None) -> Starlette:
    """The server's ASGI app. The model loads on the inference thread when the app starts (lifespan).

    Args:
        config: The server's settings.
        load: Returns the model (default: `QAModel.load(config.artifact, ...)`); tests pass a loaded one.
    """
    manifest = Manifest.read(config.artifact)
    metrics_ = Metrics(config.max_batch_size)
    engine = Engine(
        load or (lambda: QAModel.load(config.artifact, threads=config.threads, verify=config.verify)),
        max_batch_size=config.max_batch_size,
        batch_wait_ms=config.batch_wait_ms,
        max_queue=config.max_queue,
        on_batch=metrics_.batch_size.observe,
        on_tokens=metrics_.tokens.inc,
        on_cancel=metrics_.cancelled.inc,
    )
    index = None
    if config.index is not None:
        index = Index.open(config.index)
        warn_if_sized_for_another(index, config.artifact, manifest)
    service = Service(config, engine, metrics_, manifest, index)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop(timeout=config.shutdown_timeout)
        if index is not None:
            index.close()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/answer", answer, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if config.ui:
        routes.append(Route("/", page, methods=["GET"]))
    middleware = [Middleware(MetricsMiddleware, metrics=metrics_)]
    host_names = config.host_names
    if host_names is not None:
        middleware.append(Middleware(HostCheckMiddleware, names=host_names))
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
                max_age=600,
            )
        )
    # inside CORS, whose headers its answers need too
    middleware.append(Middleware(ShutdownMiddleware, draining=lambda: service.draining))
    if config.api_key:
        # the page is static HTML with no data (it asks for the key); /health is for load balancers
        middleware.append(Middleware(ApiKeyMiddleware, key=config.api_key, public=("/health", "/")))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error,
            InputError: input_error,
            HTTPException: http_error,
            ClientDisconnect: client_gone,
            Exception: server_error,
        },
    )
    app.state.service = service
    return app
