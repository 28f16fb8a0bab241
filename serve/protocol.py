"""Request parsing and response shapes: OpenAI's chat/completions API and edgeqa's native /v1/answer.

Validation is by hand (no pydantic), here and nowhere else, before anything is queued: every bad
field is a 400 with an OpenAI-style error body that names the field. The bounds of generation
options are `GenerationOptions`' own (the runtime enforces the same ones); the server's caps
(`ServeConfig`: beams, new tokens) come on top, and a request over one is a 400 naming it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any

from edgeqa.errors import InputError
from edgeqa.runtime import GenerationOptions, QAModel

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_DEPTH = 16  # nesting of a request body: OpenAI's deepest is 4 (messages -> content parts -> part)
MAX_LIST = 256  # messages, content parts
MAX_STOP = 4  # stop strings, as OpenAI
MAX_STOP_CHARS = 256


class ApiError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unavailable(message: str, code: str) -> ApiError:
    """A 503 that the caller may retry (`Retry-After`; the OpenAI client retries those by itself)."""
    return ApiError(503, message, type="server_error", code=code, headers={"Retry-After": "1"})


def shutting_down() -> ApiError:
    """What every request gets once the server is shutting down, queued, running or new."""
    return unavailable("the server is shutting down; retry on another instance", "shutting_down")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, at most `MAX_DEPTH` deep."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"the request body is not valid UTF-8 (byte {e.start})", code="invalid_encoding") from None
    if _depth_over(text, MAX_DEPTH):
        raise bad(f"the request body is nested more than {MAX_DEPTH} levels deep", code="too_deep")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise bad(f"the request body is not valid JSON: {str(e)[:120]}") from None
    if not isinstance(data, dict):
        raise bad("the request body must be a JSON object")
    return data


def _depth_over(text: str, limit: int) -> bool:
    """Whether JSON text nests arrays and objects more than `limit` deep (brackets in strings don't count).

    Checked before parsing, so that no body reaches the parser's recursion limit.
    """
    if text.count("[") + text.count("{") <= limit:  # the usual body: no walk, character by character
        return False
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _typed(data: dict[str, Any], name: str, kinds: tuple[type, ...], label: str) -> Any:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise bad(f"'{name}' must be {label}, got {json.dumps(value)[:40]}", param=name)
    return value


def check_text(text: Any, param: str) -> str:
    """A string of Unicode scalar values (no lone surrogate escapes) without NUL characters."""
    if not isinstance(text, str):
        raise bad(f"'{param}' must be a string", param=param)
    if "\x00" in text:
        raise bad(f"'{param}' contains a NUL character; remove it", param=param)
    if not _utf8(text):
        at = next(i for i, char in enumerate(text) if not _utf8(char))
        raise bad(f"'{param}' contains an unpaired surrogate ({text[at]!r} at {at}); send valid Unicode", param=param)
    return text


def _utf8(text: str) -> bool:
    """Whether `text` can be sent as UTF-8: JSON's \\ud800 escapes decode to lone surrogates, which cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_question(text: Any, param: str) -> str:
    text = check_text(text, param)
    if not text.strip():
        raise bad(f"'{param}' is empty; ask something, e.g. \"What is the capital of France?\"", param=param)
    return text


@dataclass(frozen=True)
class OpenAIRequest:
    """What an OpenAI chat or completions request asks for (`context`: edgeqa's extra field, a passage to read)."""

    question: str
    options: GenerationOptions
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    model: str
    context: str | None = None


@dataclass(frozen=True)
class NativeRequest:
    """What a `/v1/answer` request asks for (`context`: a passage every question is read from)."""

    questions: list[str]
    options: GenerationOptions
    stream: bool
    context: str | None = None


def check_context(data: dict[str, Any]) -> str | None:
    """The request's own passage to read (`context`), if it has one."""
    if data.get("context") is None:
        return None
    context = check_text(data["context"], "context")
    if not context.strip():
        raise bad("'context' is empty; give the passage to read, or leave 'context' out", param="context")
    return context


@dataclass(frozen=True)
class Caps:
    """What one request may ask of this server (`ServeConfig`'s caps within the artifact's limits).

    Attributes:
        max_new_tokens: Most answer tokens a request may ask for.
        max_beams: Most beams (beam requests are decoded alone: this bounds a batch's rows too).
    """

    max_new_tokens: int
    max_beams: int

    @classmethod
    def of(cls, model: QAModel, max_new_tokens: int | None = None, max_beams: int = 4) -> Caps:
        limit = model.manifest.max_answer_tokens
        return cls(min(max_new_tokens or limit, limit), max_beams)


def _chat_question(data: dict[str, Any]) -> str:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list of {role, content} objects", param="messages")
    if len(messages) > MAX_LIST:
        raise bad(f"'messages' has {len(messages)} messages; at most {MAX_LIST}", param="messages")
    question = None
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad(f"'{param}' must be an object with 'role' and 'content'", param=param)
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"'{param}.role' must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}", param=param)
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text parts are understood
            if len(content) > MAX_LIST:
                raise bad(f"'{param}.content' has {len(content)} parts; at most {MAX_LIST}", param=param)
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad(f'\'{param}.content\' parts must be {{"type": "text", "text": ...}}', param=param)
                texts.append(check_text(part["text"], f"{param}.content"))
            content = "\n".join(texts)
        if content is not None and not isinstance(content, str):
            raise bad(f"'{param}.content' must be a string or a list of text parts", param=param)
        if content is not None:
            check_text(content, f"{param}.content")
        if role == "user":
            question = check_question(content, f"{param}.content")
    if question is None:
        raise bad("'messages' has no user message: the last user message is the question", param="messages")
    return question


def parse_openai(data: dict[str, Any], model: QAModel, chat: bool, caps: Caps | None = None) -> OpenAIRequest:
    """Validate a chat (`chat=True`) or completions request against the model's limits and the server's caps."""
    caps = caps or Caps.of(model)
    if chat:
        question = _chat_question(data)
    else:
        prompt = data.get("prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise bad("'prompt' must be one string (one question per request)", param="prompt")
            prompt = prompt[0]
        question = check_question(prompt, "prompt")
    n = _typed(data, "n", (int,), "an integer")
    if n is not None and n != 1:
        raise bad("'n' must be 1: one answer per request", param="n", code="unsupported_value")
    tokens_field = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _typed(data, tokens_field, (int,), "an integer")
    if max_tokens is not None and max_tokens < 1:
        raise bad(f"'{tokens_field}' must be at least 1", param=tokens_field)
    if max_tokens is not None and max_tokens > caps.max_new_tokens:
        raise _over_cap(tokens_field, max_tokens, caps.max_new_tokens, model)
    temperature = _typed(data, "temperature", (int, float), "a number")
    if temperature is not None and not 0 <= temperature <= 2:
        raise bad("'temperature' must be between 0 and 2", param="temperature")
    top_p = _typed(data, "top_p", (int, float), "a number")
    if top_p is not None and not 0 < top_p <= 1:
        raise bad("'top_p' must be in (0, 1]", param="top_p")
    seed = _typed(data, "seed", (int,), "an integer")
    stop = data.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stops is not None and (
        not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) for s in stops)
    ):
        raise bad(f"'stop' must be a string or a list of at most {MAX_STOP} strings", param="stop")
    for stop_string in stops or ():
        if len(check_text(stop_string, "stop")) > MAX_STOP_CHARS:
            raise bad(f"a stop string has {len(stop_string)} characters; at most {MAX_STOP_CHARS}", param="stop")
    stream = _typed(data, "stream", (bool,), "true or false") or False
    stream_options = data.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad("'stream_options' must be an object", param="stream_options")
    include_usage = _typed(stream_options, "include_usage", (bool,), "true or false") or False
    sampling = bool(temperature)
    overrides: dict[str, Any] = {
        "max_new_tokens": min(max_tokens or model.defaults.max_new_tokens, caps.max_new_tokens)
    }
    if sampling:
        overrides.update(do_sample=True, num_beams=1, temperature=float(temperature), seed=seed)
    else:
        overrides.update(do_sample=False, num_beams=min(model.defaults.num_beams, caps.max_beams))
    if top_p is not None:
        overrides["top_p"] = float(top_p)
    model_name = data.get("model")
    return OpenAIRequest(
        question=question,
        options=_options(model, overrides),
        stop=tuple(s for s in stops or () if s),
        stream=stream,
        include_usage=include_usage,
        model=model_name if isinstance(model_name, str) else "",
        context=check_context(data),
    )


def _over_cap(field: str, value: int, cap: int, model: QAModel) -> ApiError:
    limit = model.manifest.max_answer_tokens
    source = "the artifact's limit" if cap == limit else f"this server's --max-new-tokens (the artifact allows {limit})"
    return bad(
        f"'{field}' is {value}, over {source} of {cap} new tokens; ask for {cap} or fewer", param=field, code="over_cap"
    )


def _options(model: QAModel, overrides: dict[str, Any]) -> GenerationOptions:
    """The artifact's defaults with the request's `overrides`, as `QAModel.options` applies them (so that
    sampling asked of a beam-search artifact samples with one beam, as the runtime's callers get)."""
    try:
        return model.options(None, **overrides)
    except InputError as e:
        field = next((name for name in overrides if str(e).startswith(name)), None)
        raise bad(str(e), param=field) from None


_KINDS = {int: ((int,), "an integer"), float: ((int, float), "a number"), bool: ((bool,), "true or false")}


def parse_native(data: dict[str, Any], model: QAModel, caps: Caps | None = None) -> NativeRequest:
    """`{"question": ...}` or `{"questions": [...]}` plus `GenerationOptions` fields, `stream` and `context`."""
    caps = caps or Caps.of(model)
    known = {f.name: f for f in fields(GenerationOptions)}
    unknown = sorted(set(data) - set(known) - {"question", "questions", "stream", "context"})
    if unknown:
        shown = ", ".join(json.dumps(name) for name in unknown)  # escaped: a key may be any string
        # the field's name as sent; escaped only where it holds a lone surrogate, which UTF-8 cannot carry
        param = unknown[0] if _utf8(unknown[0]) else json.dumps(unknown[0])
        raise bad(f"unknown field(s) {shown}; valid options: {', '.join(known)}", param=param)
    if ("question" in data) == ("questions" in data):
        raise bad("give either 'question' (a string) or 'questions' (a list of strings)", param="question")
    if "question" in data:
        questions = [check_question(data["question"], "question")]
    else:
        batch = data["questions"]
        if not isinstance(batch, list) or not batch:
            raise bad("'questions' must be a non-empty list of strings", param="questions")
        questions = [check_question(q, f"questions[{i}]") for i, q in enumerate(batch)]
    overrides = {}
    for name, spec in known.items():
        kind = {"int": int, "float": float, "bool": bool, "int | None": int}.get(str(spec.type), int)
        kinds, label = _KINDS[kind]
        value = _typed(data, name, kinds, label)
        if value is None:
            continue
        try:
            overrides[name] = kind(value)
        except OverflowError:  # an integer too large for a float
            raise bad(f"'{name}' is out of range", param=name) from None
    for name in ("max_new_tokens", "min_new_tokens"):
        if overrides.get(name, 0) > caps.max_new_tokens:
            raise _over_cap(name, overrides[name], caps.max_new_tokens, model)
    if overrides.get("num_beams", 1) > caps.max_beams:
        raise bad(
            f"'num_beams' is {overrides['num_beams']}, over this server's cap of {caps.max_beams} (--max-beams)",
            param="num_beams",
            code="over_cap",
        )
    # what the request leaves to the artifact's defaults stays within the caps too
    overrides.setdefault("max_new_tokens", min(model.defaults.max_new_tokens, caps.max_new_tokens))
    if not overrides.get("do_sample", model.defaults.do_sample):
        overrides.setdefault("num_beams", min(model.defaults.num_beams, caps.max_beams))
    stream = _typed(data, "stream", (bool,), "true or false") or False
    if stream and len(questions) > 1:
        raise bad("'stream' works with one 'question', not 'questions'", param="stream")
    return NativeRequest(questions, _options(model, overrides), stream, check_context(data))


def completion_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def choice(chat: bool, text: str, finish_reason: str | None, delta: bool = False) -> dict[str, Any]:
    if not chat:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    if delta:
        return {
            "index": 0,
            "delta": {"content": text} if text else {},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
    message = {"role": "assistant", "content": text, "refusal": None}
    return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}


def envelope(chat: bool, id: str, model: str, created: int | None = None, chunk: bool = False) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {
        "id": id,
        "object": kind,
        "created": created or int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }
