"""The OpenAI-compatible wire format: request checks, response bodies, errors, the routing extension field.

Requests are read as plain JSON objects rather than strict models: OpenAI clients send many optional fields,
and in proxy mode the body must reach the upstream exactly as the client wrote it. Only the fields this
server acts on are checked here; each failed check raises :class:`APIError`, which the app turns into an
OpenAI-style error body (``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serac.edits import Edit

__all__ = [
    "ROUTING_FIELD",
    "ROUTING_HEADER",
    "APIError",
    "GenerationRequest",
    "Routing",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "error_body",
    "parse_chat_request",
    "parse_json_body",
    "routing_header",
    "sse",
    "parse_completion_request",
    "parse_edits",
]

#: The extension field added to every completion body and stream chunk: how the request was routed.
ROUTING_FIELD = "serac"
#: The same routing as compact JSON in a response header, readable before a stream's first chunk.
ROUTING_HEADER = "x-serac-routing"

#: Limits on one ``POST /v1/edits`` call, so one request cannot hold the edit store for minutes.
MAX_EDITS_PER_REQUEST = 1_000
MAX_EDIT_FIELD_CHARS = 2_000
EDIT_FIELDS = ("prompt", "target", "subject", "statement")

#: The deepest nesting of lists and objects a request body may have.
MAX_JSON_DEPTH = 64

# OpenAI request fields this server does not implement, with the values that ask for the default behaviour
# (the one this server has): any other value is refused rather than ignored, so an answer never silently
# disregards what the client asked for.
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "response_format": (None, {"type": "text"}),
    # Without tools, "none" and "auto" both mean a plain text answer.
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
}
# OpenAI request fields that do not change the answer: accepted and not acted on.
_IGNORED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "prompt_cache_key",
        "safety_identifier",
    }
)
# Fields both endpoints act on.
_COMMON = frozenset(
    {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "stream"}
    | {"stream_options", "seed"}
)
#: Message roles a chat request may use; ``developer`` is OpenAI's newer name for ``system``.
CHAT_ROLES = ("system", "developer", "user", "assistant")


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI error fields to answer with."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.details = details

    def body(self) -> dict[str, Any]:
        return error_body(
            self.message, error_type=self.error_type, param=self.param, code=self.code, details=self.details
        )


def routing_header(routing: Routing) -> dict[str, str]:
    """The routing of an answer as a response header (:data:`ROUTING_HEADER`), for clients that read
    headers before the body."""
    return {ROUTING_HEADER: json.dumps(routing.to_json(), separators=(",", ":"))}


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying ``payload``."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def error_body(
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An OpenAI-style error body."""
    error: dict[str, Any] = {"message": message, "type": error_type, "param": param, "code": code}
    if details:
        error["details"] = details
    return {"error": error}


def parse_json_body(raw: bytes, *, root: str = "body", note: str = "") -> Any:
    """The JSON value of a request body, refused with a 400 unless it is JSON whose text is valid Unicode.

    JSON may spell lone UTF-16 surrogates (``"\\ud800"``), which no tokenizer or database takes, and may nest
    deeper than any parser recurses; both are refused here, before anything reads the value. ``root`` names
    a top-level list in the ``param`` of an error (``edits[0].prompt``); ``note`` ends every message.
    """
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON" + note) from None
    except RecursionError:
        raise APIError(
            400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep" + note
        ) from None
    _check_json_value(value, root, note)
    return value


def _check_json_value(value: Any, root: str, note: str) -> None:
    # Iterative: a recursive walk would overflow on the very bodies it must refuse. Paths are built only
    # for containers, so a body of a million numbers costs a million type checks and nothing more.
    if isinstance(value, str):
        _check_text(value, (), root, note)
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while pending:
        item, path = pending.pop()
        if not isinstance(item, (dict, list)):
            continue
        if len(path) >= MAX_JSON_DEPTH:
            raise APIError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep" + note)
        children = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in children:
            if isinstance(key, str):
                _check_text(key, path, root, note)
            if isinstance(child, str):
                _check_text(child, (*path, key), root, note)
            elif isinstance(child, (dict, list)):
                pending.append((child, (*path, key)))


def _check_text(text: str, path: tuple[str | int, ...], root: str, note: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        character = text[error.start]
        raise APIError(
            400,
            f"the request holds a lone UTF-16 surrogate ({ascii(character)}); text must be valid Unicode"
            + note,
            param=_param(path, root),
        ) from None


def _param(path: tuple[str | int, ...], root: str) -> str | None:
    """``("messages", 0, "content")`` as OpenAI names it: ``messages[0].content``."""
    if not path:
        return None
    text = root if isinstance(path[0], int) else ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass(frozen=True)
class Routing:
    """How one request was answered: by the counterfactual model under an edit, or by the base model.

    ``score`` is the scope classifier's best score (``None`` when nothing was scored: an empty store, or
    editing disabled); ``edit_id`` is set only for ``route == "edit"``. For a chat whose question was
    completed from earlier turns (:mod:`serac.conversation`), ``query`` is the text routed and ``turn`` the
    index of the message it came from; both are left out when the last message was routed as it is.
    """

    route: str
    edit_id: int | None = None
    score: float | None = None
    query: str | None = None
    turn: int | None = None

    @property
    def in_scope(self) -> bool:
        return self.route == "edit"

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"route": self.route, "edit_id": self.edit_id, "score": self.score}
        if self.query is not None:
            found.update(query=self.query, turn=self.turn)
        return found


@dataclass(frozen=True)
class GenerationRequest:
    """What the server needs from a chat or completion request to answer it locally.

    Args:
        query: the text the scope classifier reads (the last user turn, or the prompt).
        messages: the chat messages (``None`` for a completion request).
        prompt: the completion prompt (``None`` for a chat request).
        max_tokens: most new tokens (``None``: the endpoint's default).
        temperature: ``0`` for greedy decoding, ``None`` for the model's own generation settings.
        top_p: nucleus sampling mass, when sampling.
        stop: strings that end the answer (not included in it).
        stream: answer as server-sent events.
        include_usage: with ``stream``, send a last chunk with token counts.
        model: the model name the client asked for (echoed back).
        seed: with sampling, the seed that makes the base model's answer repeatable (``None``: unseeded).
    """

    query: str
    messages: list[dict[str, str]] | None
    prompt: str | None
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    model: str | None
    seed: int | None = None


def _check_fields(body: Mapping[str, Any], own: frozenset[str], strict: bool) -> None:
    """Refuse what this server would otherwise ignore: unimplemented fields (unless their value is the
    default) and, with ``strict``, fields it does not know at all, with OpenAI's wording."""
    for name, defaults in _UNSUPPORTED.items():
        if name in body and not any(_same_json(body[name], default) for default in defaults):
            allowed = " or ".join(json.dumps(default) for default in defaults if default is not None)
            raise APIError(
                400,
                f"'{name}' is not supported by this server: leave it out"
                + (f" or send {allowed}, the default" if allowed else ""),
                param=name,
            )
    if strict:
        for name in body:
            if name not in own and name not in _COMMON and name not in _UNSUPPORTED and name not in _IGNORED:
                raise APIError(400, f"Unrecognized request argument supplied: {name}", param=name)


def _same_json(value: Any, default: Any) -> bool:
    # JSON's false is not 0 and 0.0 is 0: compare as JSON values, not as Python ones.
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool) and value == default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return value == default
    return type(value) is type(default) and value == default


def _check_common(body: Mapping[str, Any]) -> dict[str, Any]:
    """Check the sampling fields shared by both endpoints; returns them normalized."""
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise APIError(400, f"max_tokens must be a positive integer, got {max_tokens!r}", param="max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= 2
    ):
        raise APIError(
            400, f"temperature must be a number in [0, 2], got {temperature!r}", param="temperature"
        )
    top_p = body.get("top_p")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1
    ):
        raise APIError(400, f"top_p must be a number in (0, 1], got {top_p!r}", param="top_p")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = tuple(stop)
    else:
        raise APIError(400, "stop must be a string or a list of at most 4 strings", param="stop")
    if any(not s for s in stops):
        raise APIError(400, "stop strings must not be empty", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, f"stream must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise APIError(400, "stream_options must be an object", param="stream_options")
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise APIError(
            400,
            f"stream_options.include_usage must be true or false, got {include_usage!r}",
            param="stream_options.include_usage",
        )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "model must be a string", param="model")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise APIError(400, f"seed must be a non-negative 64-bit integer, got {seed!r}", param="seed")
    return {
        "max_tokens": max_tokens,
        "temperature": None if temperature is None else float(temperature),
        "top_p": None if top_p is None else float(top_p),
        "stop": stops,
        "stream": stream,
        "include_usage": bool(include_usage),
        "model": model,
        "seed": seed,
    }


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise APIError(
                    400, "only text content parts are supported", param=f"messages[{index}].content"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(
        400,
        "message content must be a string or a list of text parts"
        + (
            " (null content goes with tool calls, which this server does not support)"
            if content is None
            else ""
        ),
        param=f"messages[{index}].content",
    )


def _message(message: Any, index: int) -> dict[str, str]:
    if not isinstance(message, dict):
        raise APIError(400, "each message is an object with a role and a content", param=f"messages[{index}]")
    role = message.get("role")
    if role not in CHAT_ROLES:
        raise APIError(
            400,
            f"messages[{index}].role must be one of {', '.join(CHAT_ROLES)}, got {role!r}"
            + (
                " (tool messages need tools, which this server does not support)"
                if role in ("tool", "function")
                else ""
            ),
            param=f"messages[{index}].role",
        )
    if "content" not in message:
        raise APIError(400, f"messages[{index}] has no content", param=f"messages[{index}].content")
    for name in ("tool_calls", "function_call"):
        if message.get(name):
            raise APIError(
                400, f"'{name}' is not supported by this server", param=f"messages[{index}].{name}"
            )
    # The chat templates of open models know the system role; developer is OpenAI's name for it.
    return {
        "role": "system" if role == "developer" else role,
        "content": _message_text(message["content"], index),
    }


def parse_chat_request(body: Any, *, strict: bool = False) -> GenerationRequest:
    """Check a ``/v1/chat/completions`` body; the query is the last user message.

    With ``strict`` (a server that answers every request itself), fields it does not know are refused too.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    _check_fields(body, frozenset({"messages"}), strict)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    parsed = [_message(message, index) for index, message in enumerate(messages)]
    user_turns = [message["content"] for message in parsed if message["role"] == "user"]
    if not user_turns:
        raise APIError(400, "messages hold no user message", param="messages")
    return GenerationRequest(
        query=user_turns[-1].strip(), messages=parsed, prompt=None, **_check_common(body)
    )


def parse_completion_request(body: Any, *, strict: bool = False) -> GenerationRequest:
    """Check a ``/v1/completions`` body; the query is the prompt (one string). ``strict``: as for chat."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    _check_fields(body, frozenset({"prompt"}), strict)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "prompt must be one non-empty string", param="prompt")
    return GenerationRequest(query=prompt.strip(), messages=None, prompt=prompt, **_check_common(body))


def parse_edits(body: Any) -> list[Edit]:
    """Check a ``POST /v1/edits`` body: a list of ``{prompt, target, subject?}`` or ``{statement}`` objects.

    Every item is checked before anything is stored; all problems are reported together.
    """
    if isinstance(body, dict) and set(body) == {"edits"}:
        body = body["edits"]
    if not isinstance(body, list):
        raise APIError(400, "the body must be a JSON list of edits; nothing was stored", param="edits")
    if not body:
        raise APIError(400, "the list of edits is empty; nothing was stored", param="edits")
    if len(body) > MAX_EDITS_PER_REQUEST:
        raise APIError(
            400,
            f"at most {MAX_EDITS_PER_REQUEST} edits per request, got {len(body)}; nothing was stored",
            param="edits",
        )
    edits, problems = [], []
    for index, item in enumerate(body):
        try:
            if not isinstance(item, dict):
                raise TypeError(f"an edit is a JSON object, got {type(item).__name__}")
            unknown = sorted(set(item) - set(EDIT_FIELDS))
            if unknown:
                raise ValueError(f"unknown fields {unknown}; an edit has {list(EDIT_FIELDS)}")
            for name in EDIT_FIELDS:
                value = item.get(name)
                if isinstance(value, str) and len(value) > MAX_EDIT_FIELD_CHARS:
                    raise ValueError(f"{name} is longer than {MAX_EDIT_FIELD_CHARS} characters")
                if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold one
                    raise ValueError(f"{name} holds a NUL character")
            edits.append(Edit.from_dict(item))
        except (TypeError, ValueError, KeyError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            problems.append({"index": index, "message": str(message)})
    if problems:
        first = problems[0]
        raise APIError(
            400,
            f"edits[{first['index']}]: {first['message']}"
            + (f" (and {len(problems) - 1} more, see details)" if len(problems) > 1 else "")
            + "; nothing was stored",
            param=f"edits[{first['index']}]",
            details=problems,
        )
    return edits


# ---------------------------------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(
    response_id: str,
    model: str,
    text: str,
    finish_reason: str,
    routing: Routing,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` body with the routing extension field."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(prompt_tokens, completion_tokens),
        ROUTING_FIELD: routing.to_json(),
    }


def chat_chunk(
    response_id: str,
    created: int,
    model: str,
    routing: Routing,
    *,
    delta: dict[str, str] | None = None,
    finish_reason: str | None = None,
    usage: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` the chunk has no choices (OpenAI's usage chunk)."""
    chunk: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if usage is not None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": None}],
        ROUTING_FIELD: routing.to_json(),
    }
    if usage is not None:
        chunk["usage"] = _usage(*usage)
    return chunk


def completion_response(
    response_id: str,
    model: str,
    text: str,
    finish_reason: str,
    routing: Routing,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A non-streamed ``text_completion`` body with the routing extension field."""
    return {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
        "usage": _usage(prompt_tokens, completion_tokens),
        ROUTING_FIELD: routing.to_json(),
    }


def completion_chunk(
    response_id: str,
    created: int,
    model: str,
    routing: Routing,
    *,
    text: str = "",
    finish_reason: str | None = None,
    usage: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk."""
    chunk: dict[str, Any] = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": []
        if usage is not None
        else [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
        ROUTING_FIELD: routing.to_json(),
    }
    if usage is not None:
        chunk["usage"] = _usage(*usage)
    return chunk
