"""Speculative upstream requests in proxy mode: a request goes upstream while it is routed, so an out-of-scope
answer waits for no routing, and an in-scope one is still answered under its edit."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from serac.serve import ServeSettings, create_app  # noqa: E402
from serac.serve.cli import build_parser  # noqa: E402

from .test_serve import (  # noqa: E402
    CITIZEN,
    OUT_OF_SCOPE,
    chat,
    chat_tokenizer,  # noqa: F401  (a module fixture used here)
    counterfactual,  # noqa: F401  (a module fixture used here)
    make_router,
    post_edits,
    serving,
)

ADMIN = "speculative-admin"
UPSTREAM_DELAY_S = 1.0
ROUTING_DELAY_S = 1.0


def slow_upstream(seen: list[str], delay_s: float) -> FastAPI:
    """An OpenAI-compatible upstream that answers "Hello" after ``delay_s`` and records each question."""
    app = FastAPI()

    def payload(stream: bool) -> dict:
        choice = (
            {"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}
            if stream
            else {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
        )
        kind = "chat.completion.chunk" if stream else "chat.completion"
        return {"id": "up", "object": kind, "created": 0, "model": "upstream-model", "choices": [choice]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await request.json()
        seen.append(body["messages"][-1]["content"])
        await asyncio.sleep(delay_s)
        if body.get("stream"):

            async def events():
                yield f"data: {JSONResponse(payload(True)).body.decode()}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(payload(False))

    return app


def speculative_proxy(upstream_url, counterfactual, embedder, speculative, routing_delay_s=0.0):  # noqa: F811
    router = make_router(embedder, counterfactual)
    if routing_delay_s:
        route_many = router.route_many

        def slow_route_many(queries):
            time.sleep(routing_delay_s)
            return route_many(queries)

        router.route_many = slow_route_many
    settings = ServeSettings(admin_token=ADMIN, speculative_upstream=speculative)
    return serving(create_app(router, upstream=upstream_url, settings=settings))


def ask(url, question, stream=False):
    if not stream:
        response = chat(url, question, key="any")
        return response.choices[0].message.content, response.serac["route"]
    chunks = list(chat(url, question, key="any", stream=True))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[0].serac["route"]


def test_out_of_scope_answers_come_from_the_upstream_and_in_scope_ones_from_the_edit(
    counterfactual,  # noqa: F811
    embedder,
):
    seen: list[str] = []
    with (
        serving(slow_upstream(seen, 0.0)) as upstream,
        speculative_proxy(upstream, counterfactual, embedder, speculative=True) as url,
    ):
        assert post_edits(url, [CITIZEN], token=ADMIN).status_code == 200
        for stream in (False, True):
            assert ask(url, OUT_OF_SCOPE[0], stream) == ("Hello", "base_model")
            assert ask(url, CITIZEN["prompt"], stream) == ("Croatia", "edit")
    # Every request went upstream once, the in-scope ones too (then dropped there).
    assert sorted(seen) == sorted([OUT_OF_SCOPE[0], CITIZEN["prompt"]] * 2)


def test_routing_overlaps_the_upstreams_answer(counterfactual, embedder):  # noqa: F811
    def elapsed(speculative: bool) -> float:
        with (
            serving(slow_upstream([], UPSTREAM_DELAY_S)) as upstream,
            speculative_proxy(
                upstream, counterfactual, embedder, speculative, routing_delay_s=ROUTING_DELAY_S
            ) as url,
        ):
            started = time.monotonic()
            assert ask(url, OUT_OF_SCOPE[1]) == ("Hello", "base_model")
            return time.monotonic() - started

    assert elapsed(speculative=False) >= UPSTREAM_DELAY_S + ROUTING_DELAY_S
    assert elapsed(speculative=True) < UPSTREAM_DELAY_S + 0.8 * ROUTING_DELAY_S


def test_cli_takes_speculative_upstream():
    assert (
        build_parser()
        .parse_args(["--upstream", "http://x/v1", "--speculative-upstream"])
        .speculative_upstream
    )
    assert not build_parser().parse_args(["--upstream", "http://x/v1"]).speculative_upstream
