"""Answers from the server's index: retrieval off the event loop, every passage read through the engine.

The rows are `edgeqa.documents.reading_rows`' and the choice `edgeqa.documents.choose`'s, the same as
`DocumentsQA`'s; only the decoding is scheduled by the engine, with every other caller's rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgeqa.documents.answers import DocumentAnswer
from edgeqa.documents.query import Index, Passage
from edgeqa.documents.reader import read_all, reading_rows
from edgeqa.runtime import GenerationOptions, QAModel, Row
from edgeqa.serve.jobs import Job
from edgeqa.serve.protocol import OpenAIRequest, choice, completion_id, envelope, usage
from edgeqa.serve.streams import SSE_HEADERS, sse, wait_all

if TYPE_CHECKING:
    from edgeqa.serve.app import Service

#: Characters of a passage shown as its snippet.
SNIPPET_CHARS = 280


async def read_index(
    request: Request,
    service: Service,
    index: Index,
    model: QAModel,
    questions: list[str],
    options: GenerationOptions,
    stop: tuple[str, ...] = (),
) -> list[DocumentAnswer] | None:
    """Each question's answer from its top passages, or None if the caller left first.

    Raises:
        InputError: a question none of whose passages can be read.
        ApiError: decoding failed (500) or the queue is full (503).
    """
    decoder = model.decoder()  # for its prompts only: the engine's decoder decodes

    def plan() -> list[tuple[str, list[Passage], list[Row | None], list[str]]]:
        planned = []
        for question in questions:
            passages = index.search(question, service.config.k)
            planned.append((question, passages, *reading_rows(decoder, question, passages, options, stop)))
        return planned

    planned = await to_thread.run_sync(plan)  # SQLite and the tokenizer: not on the event loop
    jobs = [Job(row) for _, _, rows, _ in planned for row in rows if row is not None]
    if jobs:
        service.submit(jobs)
        if await wait_all(request, service.engine, jobs) is None:
            return None
    return read_all(planned, model.manifest.no_answer, service.config.retrieval_weight)


async def openai_from_index(
    request: Request, service: Service, index: Index, model: QAModel, parsed: OpenAIRequest, chat: bool
) -> Response:
    """An OpenAI response whose answer comes from the index; the sources in its extra `edgeqa_sources` field
    (official clients keep unknown fields: `response.model_extra`). A stream sends the answer in one chunk."""
    read = await read_index(request, service, index, model, [parsed.question], parsed.options, parsed.stop)
    if read is None:
        return Response(status_code=499)
    [answer] = read
    finish_reason = answer.finish_reason
    chosen = answer.chosen
    counts = usage(sum(c.prompt_tokens for c in answer.candidates), chosen.answer_tokens if chosen else 0)
    extra = {"edgeqa_sources": sources(answer)}
    if not parsed.stream:
        body = envelope(chat, completion_id(chat), service.model_id)
        return JSONResponse({**body, "choices": [choice(chat, answer.text, finish_reason)], "usage": counts, **extra})
    base = envelope(chat, completion_id(chat), service.model_id, chunk=True)
    first = choice(chat, answer.text, None, delta=True)
    if chat:
        first["delta"] = {"role": "assistant", "content": answer.text}
    chunks = [{**base, "choices": [first]}, {**base, "choices": [choice(chat, "", finish_reason, delta=True)], **extra}]
    if parsed.include_usage:
        chunks.append({**base, "choices": [], "usage": counts})
    text = "".join(sse(chunk) for chunk in chunks) + "data: [DONE]\n\n"
    return Response(text, media_type="text/event-stream", headers=SSE_HEADERS)


def sources(answer: DocumentAnswer) -> list[dict[str, Any]]:
    """The passages read for an answer, best BM25 rank first: where each is, a snippet, and which was chosen."""
    served = []
    for c in answer.candidates:
        read = {key: value for key, value in c.to_dict().items() if key != "passage"}  # a snippet instead
        lines = [c.passage.start_line, c.passage.end_line]
        where = {"file": c.passage.file, "lines": lines, "unit": c.passage.unit, "snippet": _snippet(c.passage.text)}
        served.append(read | where | {"chosen": c.passage is answer.source})
    return served


def answer_body(answer: DocumentAnswer) -> dict[str, Any]:
    """`/v1/answer`'s object for an answer from the index."""
    return {**answer.to_dict(candidates=False), "sources": sources(answer)}


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"
