"""The server as a careless or hostile client meets it: malformed bodies, unimplemented parameters, prompts
beyond the context, oversized requests, and what a proxy passes to and from its upstream.

Every bad request gets an OpenAI-style JSON error, leaves the edit store as it was, and leaves its keep-alive
connection usable for the next request.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from serac.serve import ServeSettings, create_app  # noqa: E402
from serac.serve.cli import build_parser  # noqa: E402

from .conftest import make_char_tokenizer, make_tiny_llama  # noqa: E402
from .test_serve import (  # noqa: E402
    ADMIN,
    CHAT_TEMPLATE,
    CITIZEN,
    GREEDY,
    KEY,
    OUT_OF_SCOPE,
    TargetCounterfactualModel,
    chat,
    client,
    local_app,
    make_router,
    post_edits,
    serving,
)

MiB = 1024 * 1024
INFERENCE = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
WRITE = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def base_model(chat_tokenizer):
    return make_tiny_llama(chat_tokenizer, seed=0)


@pytest.fixture(scope="module")
def counterfactual(chat_tokenizer):
    return TargetCounterfactualModel(make_tiny_llama(chat_tokenizer, seed=3), chat_tokenizer)


@pytest.fixture(scope="module")
def local_server(base_model, chat_tokenizer, counterfactual, embedder):
    """Local mode with one edit, an admin token, an inference key and a 1 MiB request limit."""
    router = make_router(embedder, counterfactual, chat_tokenizer)
    app = local_app(
        base_model, chat_tokenizer, router, admin_token=ADMIN, api_keys=(KEY,), max_request_bytes=MiB
    )
    with serving(app) as url:
        (edit_id,) = post_edits(url, [CITIZEN]).json()["ids"]
        yield url, router, edit_id


def chat_body(content, **fields):
    return json.dumps({"messages": [{"role": "user", "content": content}], **GREEDY, **fields})


def assert_error(response, status, *, param=None, code=None, text=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error", error
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    if text is not None:
        assert text in error["message"], error
    return error


# ---------------------------------------------------------------------------------------------- malformed
def test_malformed_requests_are_400s_and_keep_the_connection(local_server):
    url, router, edit_id = local_server
    before = router.store.items()
    nested = b"[" * 100_000 + b"]" * 100_000
    bad = [
        ("POST", "/chat/completions", chat_body("\ud800").encode(), INFERENCE, "messages[0].content"),
        (
            "POST",
            "/chat/completions",
            chat_body("Hi \udfff there").encode(),
            INFERENCE,
            "messages[0].content",
        ),
        ("POST", "/completions", json.dumps({"prompt": "\ud800 hi", **GREEDY}).encode(), INFERENCE, "prompt"),
        ("POST", "/chat/completions", nested, INFERENCE, None),
        ("POST", "/completions", nested, INFERENCE, None),
        ("POST", "/edits", nested, WRITE, None),
        ("POST", "/edits", json.dumps([{"prompt": "Who \ud800?", "target": "x"}]).encode(), WRITE, None),
        ("POST", "/edits", json.dumps([{"prompt": "Who?", "target": "x\x00"}]).encode(), WRITE, None),
        ("DELETE", f"/edits/{2**70}", None, WRITE, "edit_id"),
        ("GET", f"/edits/{2**70}", None, WRITE, "edit_id"),
        ("DELETE", "/edits/%EF%BC%91", None, WRITE, "edit_id"),  # a full-width digit one
    ]
    with httpx.Client(timeout=60) as http:
        first = http.get(f"{url}/models", headers=INFERENCE)
        stream = first.extensions["network_stream"]
        for method, path, content, headers, param in bad:
            response = http.request(method, url + path, content=content, headers=headers)
            assert_error(response, 400, param=param)
            # The same connection answers the next request: a server error would have closed it.
            assert response.extensions["network_stream"] is stream, (method, path)
            assert "close" not in response.headers.get("connection", "")
        good = http.post(f"{url}/chat/completions", content=chat_body(CITIZEN["prompt"]), headers=INFERENCE)
        assert good.status_code == 200 and good.json()["serac"]["edit_id"] == edit_id
        assert good.extensions["network_stream"] is stream
    assert router.store.items() == before


# ---------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
        ("logit_bias", {"5": 100}),
        ("tool_choice", "required"),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1),
    ],
)
def test_unimplemented_parameters_are_refused(local_server, param, value):
    url, _, _ = local_server
    with pytest.raises(openai.BadRequestError) as refused:
        chat(url, "Name a prime number.", **{param: value})
    assert refused.value.body["param"] == param
    assert param in refused.value.body["message"]
    assert refused.value.body["type"] == "invalid_request_error"


def test_default_values_and_harmless_fields_are_accepted(local_server):
    url, _, _ = local_server
    expected = chat(url, "Name a prime number.").choices[0].message.content
    accepted = [
        {"response_format": {"type": "text"}},
        {"tool_choice": "none"},
        {"logit_bias": {}},
        {"presence_penalty": 0, "frequency_penalty": 0.0},
        {"user": "someone", "metadata": {"a": "b"}, "store": False, "seed": 3},
        {"response_format": None, "tools": None, "tool_choice": None},
    ]
    for fields in accepted:
        assert chat(url, "Name a prime number.", **fields).choices[0].message.content == expected, fields


def test_seed_makes_sampled_answers_repeatable(local_server):
    url, _, _ = local_server

    def sampled(seed):
        return (
            chat(url, OUT_OF_SCOPE[1], temperature=1.0, max_tokens=16, seed=seed).choices[0].message.content
        )

    assert sampled(7) == sampled(7) != sampled(8)
    with pytest.raises(openai.BadRequestError):
        sampled(-1)


def test_unknown_fields_are_refused_like_openai(local_server):
    url, _, _ = local_server
    with pytest.raises(
        openai.BadRequestError, match="Unrecognized request argument supplied: top_k"
    ) as error:
        chat(url, "Name a prime number.", extra_body={"top_k": 5})
    assert error.value.body["param"] == "top_k"


def test_messages_need_content_and_a_known_role(local_server):
    url, _, _ = local_server
    bodies = [
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user"}]}, "messages[1].content"),
        (
            {"messages": [{"role": "wizard", "content": "x"}, {"role": "user", "content": "Hi"}]},
            "messages[0].role",
        ),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
        ({"messages": [{"content": "Hi"}]}, "messages[0].role"),
    ]
    with httpx.Client(timeout=60) as http:
        for body, param in bodies:
            assert_error(http.post(f"{url}/chat/completions", json=body, headers=INFERENCE), 400, param=param)
    # The developer role is OpenAI's name for the system role.
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    answer = client(url).chat.completions.create(model="tiny", messages=messages, **GREEDY)
    messages[0]["role"] = "system"
    same = client(url).chat.completions.create(model="tiny", messages=messages, **GREEDY)
    assert answer.choices[0].message.content == same.choices[0].message.content


def test_stream_options_must_be_booleans(local_server):
    url, _, _ = local_server
    for value in ("no", 0, 1, "false"):
        with pytest.raises(openai.BadRequestError) as error:
            chat(url, "Hi", stream=True, stream_options={"include_usage": value})
        assert error.value.body["param"] == "stream_options.include_usage"
    chunks = list(chat(url, "Hi", stream=True, stream_options={"include_usage": False}))
    assert all(chunk.usage is None for chunk in chunks)


# ---------------------------------------------------------------------------------------------- context
def test_context_length_is_checked_before_routing(local_server):
    url, router, edit_id = local_server
    # The tiny base model reads 256 tokens (characters); both prompts are longer.
    padding = " Please answer." * 30
    in_scope, out_of_scope = CITIZEN["prompt"] + padding, OUT_OF_SCOPE[0] + padding
    assert chat(url, CITIZEN["prompt"] + " Please answer.").serac["edit_id"] == edit_id
    errors = []
    for question in (in_scope, out_of_scope):
        with pytest.raises(openai.BadRequestError) as error:
            chat(url, question)
        errors.append(error.value.body)
        with pytest.raises(openai.BadRequestError) as error:
            client(url).completions.create(model="tiny", prompt=question, **GREEDY)
        assert error.value.body["code"] == "context_length_exceeded"
        with pytest.raises(openai.BadRequestError) as error:
            chat(url, question, stream=True)
        assert error.value.body["code"] == "context_length_exceeded"
    assert [body["code"] for body in errors] == ["context_length_exceeded"] * 2


# ---------------------------------------------------------------------------------------------- size
def test_request_size_is_limited_and_checked_before_parsing():
    assert ServeSettings().max_request_bytes == 4 * MiB
    with pytest.raises(ValueError, match="max_request_bytes"):
        ServeSettings(max_request_bytes=0)
    args = build_parser().parse_args(["--max-request-bytes", "1000"])
    assert args.max_request_bytes == 1000
    assert build_parser().parse_args([]).max_request_bytes == 4 * MiB


def test_oversized_requests_get_413_and_do_not_stall_others(local_server):
    url, router, _ = local_server
    before = router.store.items()

    async def chunks(size):  # a body without Content-Length, sent in pieces
        yield b'{"prompt": "'
        for _ in range(size // 65535):
            yield b"word " * 13107
        yield b'"}'

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as http:

            async def timed(coroutine):
                start = time.perf_counter()
                response = await coroutine
                return response, time.perf_counter() - start

            async def small(delay):
                await asyncio.sleep(delay)
                return await timed(
                    http.post(f"{url}/completions", json={"prompt": "Hi", **GREEDY}, headers=INFERENCE)
                )

            big = json.dumps({"prompt": "word " * 1_600_000})  # 8 MB
            under = json.dumps(
                {"prompt": "word " * 200_000}
            )  # 1 MB of text: under the limit, over the context
            return await asyncio.gather(
                timed(http.post(f"{url}/completions", content=big, headers=INFERENCE)),
                timed(http.post(f"{url}/edits", content=big, headers=WRITE)),
                timed(http.post(f"{url}/completions", content=chunks(2 * MiB), headers=INFERENCE)),
                timed(http.post(f"{url}/completions", content=under, headers=INFERENCE)),
                small(0.05),
                small(0.3),
            )

    results = asyncio.run(scenario())
    (big, big_s), (edits, _), (chunked, _), (under, under_s), *smalls = results
    for response in (big, edits, chunked):
        error = response.json()["error"]
        assert response.status_code == 413 and error["code"] == "request_too_large", response.text
        assert str(MiB) in error["message"]
    assert big_s < 5
    assert under.json()["error"]["code"] == "context_length_exceeded" and under_s < 5, under.text
    for response, seconds in smalls:
        assert response.status_code == 200 and seconds < 5, seconds
    assert router.store.items() == before


# ---------------------------------------------------------------------------------------------- proxy
def fake_upstream(seen: list[dict[str, str]]) -> FastAPI:
    """An OpenAI-compatible upstream that records the headers it gets and answers with rate-limit headers;
    a question containing "rate" gets a 429."""
    app = FastAPI()
    limits = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-tokens": "6ms",
        "x-request-id": "upstream-request",
        "x-upstream-secret": "internal",
    }

    def answer(stream: bool) -> dict:
        return {
            "id": "chatcmpl-up",
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": 0,
            "model": "upstream-model",
            "choices": [
                {"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}
                if stream
                else {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello"},
                    "finish_reason": "stop",
                }
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        seen.append(dict(request.headers))
        body = await request.json()
        if "rate" in body["messages"][-1]["content"]:
            error = {
                "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}
            }
            headers = {**limits, "retry-after": "7", "retry-after-ms": "7000", "x-should-retry": "false"}
            return JSONResponse(error, status_code=429, headers=headers)
        if body.get("stream"):

            async def events():
                yield f"data: {json.dumps(answer(True))}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers=limits)
        return JSONResponse(answer(False), headers=limits)

    @app.get("/v1/models")
    async def models(request: Request):
        seen.append(dict(request.headers))
        return JSONResponse({"object": "list", "data": [{"id": "upstream-model", "object": "model"}]})

    return app


def proxy(upstream_url, counterfactual, embedder, **settings):
    router = make_router(embedder, counterfactual)
    return serving(create_app(router, upstream=upstream_url, settings=ServeSettings(**settings)))


def test_proxy_never_forwards_the_callers_credentials(counterfactual, embedder):
    seen: list[dict[str, str]] = []
    with serving(fake_upstream(seen)) as upstream:
        # An open proxy (no keys of its own) used to pass the caller's Authorization on: the admin token too.
        with proxy(upstream, counterfactual, embedder, admin_token=ADMIN) as url:
            for key in (ADMIN, "caller-key"):
                assert chat(url, OUT_OF_SCOPE[0], key=key).choices[0].message.content == "Hello"
                assert (
                    "".join(
                        c.choices[0].delta.content or ""
                        for c in chat(url, OUT_OF_SCOPE[0], key=key, stream=True)
                    )
                    == "Hello"
                )
                assert [m.id for m in client(url, key=key).models.list()] == ["upstream-model"]
        assert len(seen) == 6 and all("authorization" not in headers for headers in seen), seen
        seen.clear()
        with proxy(
            upstream, counterfactual, embedder, admin_token=ADMIN, api_keys=(KEY,), upstream_api_key="up-key"
        ) as url:
            chat(url, OUT_OF_SCOPE[0])
            list(chat(url, OUT_OF_SCOPE[0], stream=True))
            client(url).models.list()
        assert [headers["authorization"] for headers in seen] == ["Bearer up-key"] * 3


def test_proxy_passes_rate_limit_headers_back(counterfactual, embedder):
    with serving(fake_upstream([])) as upstream, proxy(upstream, counterfactual, embedder) as url:
        messages = [{"role": "user", "content": OUT_OF_SCOPE[0]}]
        completions = client(url).chat.completions
        for stream in (False, True):
            raw = completions.with_raw_response.create(model="m", messages=messages, stream=stream)
            assert raw.headers["x-ratelimit-remaining-requests"] == "59"
            assert raw.headers["x-ratelimit-reset-tokens"] == "6ms"
            assert "x-upstream-secret" not in raw.headers  # only the headers clients act on
        with pytest.raises(openai.RateLimitError) as limited:
            chat(url, "Are we rate limited?")
        headers = limited.value.response.headers
        assert (headers["retry-after"], headers["retry-after-ms"], headers["x-should-retry"]) == (
            "7",
            "7000",
            "false",
        )
        assert headers["x-ratelimit-limit-requests"] == "60"
        assert limited.value.body["message"] == "slow down"


def test_cli_upstream_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SERAC_UPSTREAM_API_KEY", "from-env")
    assert build_parser().parse_args(["--upstream", "http://x/v1"]).upstream_api_key == "from-env"
