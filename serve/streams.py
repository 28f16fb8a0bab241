"""Waiting for answers: server-sent events as OpenAI sends them, and plain responses that notice
when the caller leaves (its rows are then cancelled)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from anyio import create_task_group
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from edgeqa.serve.engine import Engine
from edgeqa.serve.jobs import Delta, Done, Failed, Job, Result
from edgeqa.serve.protocol import ApiError, choice, completion_id, envelope, usage

if TYPE_CHECKING:
    from edgeqa.serve.app import Service

PING = ": ping\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStream(StreamingResponse):
    """An SSE response that always listens for the caller leaving, and cancels its jobs when the
    response ends early, however it ends."""

    def __init__(self, content: AsyncIterator[str], engine: Engine, jobs: list[Job]):
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.engine = engine
        self.jobs = jobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with create_task_group() as group:

                async def stream() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            for job in self.jobs:
                self.engine.cancel(job)


async def events(job: Job, keepalive_s: float) -> AsyncIterator[Delta | Done | Failed | str]:
    """The job's events, with a `: ping` comment whenever none came for `keepalive_s`."""
    assert job.events is not None
    while True:
        try:
            event = await asyncio.wait_for(job.events.get(), keepalive_s)
        except TimeoutError:
            yield PING
            continue
        yield event
        if not isinstance(event, Delta):
            return


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def wait_all(request: Request, engine: Engine, jobs: list[Job]) -> list[Result] | None:
    """Every job's result, or None if the caller left first (then the jobs are cancelled).

    Raises:
        ApiError: a job failed.
    """
    gone = asyncio.ensure_future(_disconnected(request.receive))
    answers = asyncio.ensure_future(_all_final(jobs))  # one task, not a gather: a cancelled one logs nothing
    try:
        await asyncio.wait({answers, gone}, return_when=asyncio.FIRST_COMPLETED)
        return answers.result() if answers.done() else None
    finally:
        gone.cancel()
        answers.cancel()
        for job in jobs:
            engine.cancel(job)


async def _all_final(jobs: list[Job]) -> list[Result]:
    return [await _final(job) for job in jobs]


async def _final(job: Job) -> Result:
    assert job.events is not None
    while True:
        event = await job.events.get()
        if isinstance(event, Done):
            return event.result
        if isinstance(event, Failed):
            raise ApiError(500, event.message, type="server_error")


async def openai_response(request: Request, service: Service, job: Job, chat: bool) -> Response:
    results = await wait_all(request, service.engine, [job])
    if results is None:
        return Response(status_code=499)
    result = results[0]
    body = envelope(chat, completion_id(chat), service.model_id)
    body["choices"] = [choice(chat, result.answer.text, result.finish_reason)]
    body["usage"] = usage(len(job.row.ids), result.answer.answer_tokens)
    return JSONResponse(body)


def sse(data: dict[str, Any]) -> str:
    """One server-sent event carrying `data` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def openai_stream(service: Service, job: Job, parsed: Any, chat: bool) -> AsyncIterator[str]:
    """Chunks as OpenAI streams them: one id, role first (chat), text deltas, the finish, usage, [DONE]."""
    base = envelope(chat, completion_id(chat), service.model_id, chunk=True)
    extra = {"usage": None} if parsed.include_usage else {}
    if chat:
        first = choice(chat, "", None, delta=True)
        first["delta"] = {"role": "assistant", "content": ""}
        yield sse({**base, "choices": [first], **extra})
    async for event in events(job, service.config.keepalive_s):
        if isinstance(event, str):
            yield event
        elif isinstance(event, Delta):
            yield sse({**base, "choices": [choice(chat, event.text, None, delta=True)], **extra})
        elif isinstance(event, Failed):
            yield sse(ApiError(500, event.message, type="server_error").body())
            return
        else:
            yield sse({**base, "choices": [choice(chat, "", event.result.finish_reason, delta=True)], **extra})
            if parsed.include_usage:
                yield sse({**base, "choices": [], "usage": usage(len(job.row.ids), event.result.answer.answer_tokens)})
            yield "data: [DONE]\n\n"


async def native_stream(service: Service, job: Job) -> AsyncIterator[str]:
    """`{"delta": text}` events, then the whole answer with its timings, then [DONE]."""
    async for event in events(job, service.config.keepalive_s):
        if isinstance(event, str):
            yield event
        elif isinstance(event, Delta):
            yield sse({"delta": event.text})
        elif isinstance(event, Failed):
            yield sse(ApiError(500, event.message, type="server_error").body())
            return
        else:
            yield sse(event.result.to_dict())
            yield "data: [DONE]\n\n"
