"""The FastAPI app: OpenAI-compatible completions routed through the edits, and the edits API.

Two modes share this app:

* **local**: a :class:`~serac.serve.engine.BaseModelGenerator` answers out-of-scope requests in this process;
* **proxy**: out-of-scope requests are forwarded to an OpenAI-compatible upstream (vLLM, TGI, llama.cpp,
  a hosted API, another ``serac serve``), its answer streamed back as it arrives and its errors passed on.

In both, in-scope requests are answered here by the counterfactual model. Model work runs on worker threads,
never on the event loop: one for routing (the embedder and the edit store), one for edit writes, one for
generation (:mod:`serac.serve.batching`), which decodes the base model's requests in one continuous batch that
requests join and leave between steps (:mod:`serac.serve.continuous`), and one for a trained counterfactual
model's calls. The upstream of proxy mode is :mod:`serac.serve.upstream`. Each is a single thread because
Hugging Face fast tokenizers are not safe to call from several threads at once (each model has its own;
prompts are tokenized with a copy of the base model's tokenizer of their own). A request's routing is the scope decision computed for that request alone and
travels with it, so concurrent requests never see each other's routing; a decision reads the edit store
under its lock, so it sees an edit write's transaction whole or not at all, and a slow write (its embedding
runs before the lock is taken) does not hold routing back.

Request bodies are read up to ``ServeSettings.max_request_bytes`` (a 413 beyond it, before anything is parsed)
and parsed on a worker thread too; in local mode a prompt is measured against the base model's context before
it is routed, so both routes refuse the same prompts, and a prompt far beyond the context is refused from its
length alone, without tokenizing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serac.in_context import decision_edits
from serac.serve.batching import BaseJob, EditJob, GenerationBatcher, SharedCounterfactual
from serac.serve.engine import BaseModelGenerator, EditRouter, GenerationResult
from serac.serve.in_context import in_context_config, request_with_edit
from serac.serve.metrics import ServerMetrics
from serac.serve.persistence import describe, description
from serac.serve.protocol import (
    APIError,
    GenerationRequest,
    Routing,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    error_body,
    new_id,
    parse_chat_request,
    parse_completion_request,
    parse_edits,
    parse_json_body,
    routing_header,
    sse,
)
from serac.serve.settings import DEFAULT_MAX_REQUEST_BYTES, ServeSettings
from serac.serve.upstream import Upstream
from serac.store import UnknownEditError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "ServeSettings", "create_app"]


def _token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer`` stands for, read off its vocabulary.

    A vocabulary entry is at least as long as the text its token covers (byte-level entries spell each byte
    as one character, SentencePiece entries spell the text itself), so a prompt of more than
    ``context * longest`` characters cannot fit the context: it is refused without tokenizing megabytes.
    The exceptions are tokenizers that drop characters or fold a run of unknown ones into one token; the
    causal models served here use byte-level or byte-fallback vocabularies, which need neither.
    """
    try:
        vocabulary = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return 0
    return max((len(token) for token in vocabulary), default=0)


class _Server:
    """The state behind one app: parts, workers, metrics, the upstream client."""

    def __init__(
        self,
        router: EditRouter,
        settings: ServeSettings,
        generator: BaseModelGenerator | None,
        upstream: str | None,
    ) -> None:
        if (generator is None) == (upstream is None):
            raise ValueError(
                "give exactly one of a base model generator (local mode) or an upstream URL (proxy)"
            )
        self.router = router
        self.settings = settings
        self.generator = generator
        self.metrics = ServerMetrics()
        self.upstream = Upstream(upstream, settings, self.metrics, self._record) if upstream else None
        self.metrics.edits_stored.set(len(router.store))
        self.routing_pool = ThreadPoolExecutor(1, thread_name_prefix="serac-routing")
        # Edit writes (an embedding and a database transaction) have a worker of their own, so a slow write
        # never holds a routing decision back; the store's lock keeps each decision on one consistent store.
        self.writes_pool = ThreadPoolExecutor(1, thread_name_prefix="serac-edit-writes")
        if router.enabled:
            # Routing and writes then embed on two threads with one embedder, whose fast tokenizer changes
            # its own padding settings on its first call only: make that call here, before either thread.
            router.store.encode(["warm-up"])
        self.batcher = GenerationBatcher(
            router,
            generator,
            max_batch_size=settings.max_batch_size,
            on_batch=lambda route, size: self.metrics.batch_size.labels(route).observe(size),
            continuous=settings.batching == "continuous",
            shared=(
                SharedCounterfactual.for_models(generator, router.memory.counterfactual_model)
                if settings.shared_blocks and settings.batching == "continuous" and router.enabled
                else None
            ),
        )
        # Parsing a body of megabytes is not model work, but it must not hold the event loop either.
        self.parsing_pool = ThreadPoolExecutor(2, thread_name_prefix="serac-parsing")
        self.max_prompt_chars: int | None = None
        if generator is not None and generator.max_length is not None:
            longest = _longest_token_chars(generator.tokenizer)
            self.max_prompt_chars = generator.max_length * longest if longest else None
        self.pending_routes: list[tuple[str, asyncio.Future]] = []
        self.routing_task: asyncio.Task | None = None
        self.max_route_batch = 64

    @property
    def mode(self) -> str:
        return "local" if self.generator is not None else "proxy"

    async def run(self, pool: ThreadPoolExecutor, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)

    async def route(self, query: Any) -> tuple[Routing, Any]:
        """This request's routing. Queries that arrive while the routing worker is busy are decided
        together in its next pass: one batched embedding costs a fraction of one per query, and each
        query still gets its own decision."""
        if not self.router.enabled:
            return self.router.route(query)  # no model work: a plain server
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending_routes.append((query, future))
        if self.routing_task is None or self.routing_task.done():
            self.routing_task = asyncio.create_task(self._route_pending())
        return await future

    async def _route_pending(self) -> None:
        # Runs on the event loop; only the classification itself goes to the routing worker.
        while self.pending_routes:
            batch, self.pending_routes = (
                self.pending_routes[: self.max_route_batch],
                self.pending_routes[self.max_route_batch :],
            )
            try:
                routed = await self.run(
                    self.routing_pool, self.router.route_many, [query for query, _ in batch]
                )
            except Exception as error:  # every waiting request gets the failure, not a hang
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, routed, strict=True):
                if not future.done():
                    future.set_result(result)

    # ------------------------------------------------------------------ auth
    def check_inference(self, request: Request) -> None:
        if self.settings.api_keys and not any(
            _token_matches(_bearer(request), key) for key in self.settings.api_keys
        ):
            raise APIError(
                401, "missing or invalid API key", error_type="authentication_error", code="invalid_api_key"
            )

    def check_read_edits(self, request: Request) -> None:
        token = _bearer(request)
        if self.settings.admin_token and _token_matches(token, self.settings.admin_token):
            return
        self.check_inference(request)

    def check_admin(self, request: Request) -> None:
        if not self.settings.admin_token:
            raise APIError(
                403,
                "changing edits is disabled: start the server with --admin-token (or SERAC_ADMIN_TOKEN)",
                error_type="permission_error",
                code="no_admin_token",
            )
        if not _token_matches(_bearer(request), self.settings.admin_token):
            raise APIError(
                401,
                "missing or invalid admin token",
                error_type="authentication_error",
                code="invalid_admin_token",
            )
        if not self.router.enabled:
            raise APIError(
                403,
                "editing is disabled on this server",
                error_type="permission_error",
                code="editing_disabled",
            )

    # ------------------------------------------------------------------ bodies
    async def read_body(self, request: Request, note: str = "") -> bytes:
        """The request body, refused with a 413 as soon as it is known to be over the limit: from its
        ``Content-Length`` before a byte is read, else while it is read."""
        limit = self.settings.max_request_bytes

        def too_large() -> APIError:
            return APIError(
                413,
                f"the request body is larger than this server's limit of {limit} bytes{note}",
                code="request_too_large",
            )

        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isascii() or not declared.isdigit():
                raise APIError(400, f"invalid Content-Length {declared!r}{note}")
            if int(declared) > limit:
                raise too_large()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large()
        return bytes(body)

    async def read_json(
        self, request: Request, parse: Callable[[Any], Any], *, root: str = "body", note: str = ""
    ) -> tuple[bytes, Any]:
        """The body and what ``parse`` makes of its JSON value, parsed and checked off the event loop.

        ``root`` and ``note`` are :func:`~serac.serve.protocol.parse_json_body`'s.
        """
        raw = await self.read_body(request, note)

        def job() -> tuple[bytes, Any]:
            return raw, parse(parse_json_body(raw, root=root, note=note))

        return await self.run(self.parsing_pool, job)

    # ------------------------------------------------------------------ completions
    def response_model(self, parsed: GenerationRequest) -> str:
        """The ``model`` of an answer given here: ours in local mode, the one asked for in proxy mode."""
        if self.upstream is not None and parsed.model:
            return parsed.model
        return self.settings.model_name

    def max_new_tokens(self, request: GenerationRequest, endpoint: str) -> int:
        default = (
            self.settings.completion_max_tokens if endpoint == "completions" else self.settings.max_tokens
        )
        value = request.max_tokens if request.max_tokens is not None else default
        if value > self.settings.max_tokens:
            raise APIError(
                400,
                f"max_tokens is at most {self.settings.max_tokens} on this server, got {value}",
                param="max_tokens",
            )
        return value

    def check_prompt_length(self, parsed: GenerationRequest) -> None:
        """Refuse a prompt whose length in characters alone shows it is beyond the base model's context."""
        if self.max_prompt_chars is None or self.generator is None:
            return
        if parsed.messages is not None:
            chars, param = sum(len(message["content"]) for message in parsed.messages), "messages"
        else:
            chars, param = len(parsed.prompt or ""), "prompt"
        if chars > self.max_prompt_chars:
            raise APIError(
                400,
                f"the prompt has {chars} characters, more than fit in this model's context of "
                f"{self.generator.max_length} tokens",
                param=param,
                code="context_length_exceeded",
            )

    async def complete(self, request: Request, endpoint: str) -> Response:
        started = time.perf_counter()
        route, status, streaming = "none", 500, False
        # Until its job is submitted, a batch about to start may wait a little for this request.
        arrival = self.batcher.arrival()
        sent: asyncio.Task | None = None  # a speculative request upstream, started before routing
        try:
            self.check_inference(request)
            # Only a server that answers every request itself refuses fields it does not know; a proxy
            # leaves them to its upstream.
            parse = parse_chat_request if endpoint == "chat" else parse_completion_request
            raw, parsed = await self.read_json(request, partial(parse, strict=self.generator is not None))
            max_new_tokens = self.max_new_tokens(parsed, endpoint)
            prompt_ids: list[int] | None = None
            if self.generator is not None:
                # Before routing: a prompt beyond the context is refused whichever route it would take.
                self.check_prompt_length(parsed)
                # Off the generation thread, which may be running a batch meanwhile.
                prompt_ids = await self.run(self.parsing_pool, self.generator.prompt_ids, parsed)
            if self.upstream is not None and self.settings.speculative_upstream and self.router.enabled:
                sent = self.upstream.speculate(request, endpoint, raw)
            routing_started = time.perf_counter()
            # A chat is routed by its conversation: the last user turn read with the turns before it.
            routing, decision = await self.route(
                parsed.messages if parsed.messages is not None else parsed.query
            )
            self.metrics.routing.observe(time.perf_counter() - routing_started)
            route = routing.route
            in_context = in_context_config(self.router) if routing.in_scope else None
            if in_context is not None:
                # The in-context kind: the base model answers for itself with the edit in the request, on the
                # base route's path (this process's model in local mode, the upstream in proxy mode).
                parsed, raw = await self.run(
                    self.parsing_pool, request_with_edit, parsed, raw, decision_edits(decision), in_context
                )
                if self.generator is not None:
                    prompt_ids = await self.run(self.parsing_pool, self.generator.prompt_ids, parsed)
            if routing.in_scope and in_context is None:
                prompt_tokens = None if prompt_ids is None else len(prompt_ids)
                job = self._edit_job(decision, parsed, max_new_tokens, endpoint, prompt_tokens)
            elif prompt_ids is not None:
                job = self._base_job(prompt_ids, parsed, max_new_tokens)
            else:
                assert self.upstream is not None  # proxy mode: no prompt ids
                if sent is not None and in_context is None:
                    upstream_response, sent = await sent, None  # the request as sent, routed out of scope
                else:
                    upstream_response = await self.upstream.send(request, endpoint, raw)
                response = await self.upstream.respond(
                    upstream_response, endpoint, parsed.stream, routing, started
                )
                status, streaming = response.status_code, isinstance(response, StreamingResponse)
                return response
            if parsed.stream:
                status, streaming = 200, True
                return StreamingResponse(
                    self._stream(self._submit_streamed(job), parsed, endpoint, routing, started),
                    media_type="text/event-stream",
                    headers=routing_header(routing),
                )
            result: GenerationResult = await asyncio.wrap_future(self.batcher.submit(job))
            status = 200
            return JSONResponse(
                self._body(parsed, endpoint, routing, result), headers=routing_header(routing)
            )
        except APIError as error:
            status = error.status_code
            raise
        finally:
            arrival.done()
            if sent is not None:  # answered here, or with the edit in it, or refused: not the speculative one
                Upstream.drop(sent)
            if not streaming:  # a stream records itself when it ends
                self._record(endpoint, route, status, started)

    def _record(self, endpoint: str, route: str, status: int, started: float) -> None:
        self.metrics.requests.labels(endpoint, route, str(status)).inc()
        if status < 400:
            self.metrics.duration.labels(endpoint, route).observe(time.perf_counter() - started)

    def _edit_job(
        self,
        decision: Any,
        parsed: GenerationRequest,
        max_new_tokens: int,
        endpoint: str,
        prompt_tokens: int | None,
    ) -> EditJob:
        # The caller's sampling settings and the prompt's length as the base route counts it (the templated
        # prompt), so usage and sampling do not depend on the route. A completion continues the prompt: the
        # answer follows it after a space, as EditableModel.generate() appends it.
        return EditJob(
            decision,
            parsed.query,
            parsed,
            max_new_tokens,
            prompt_tokens=prompt_tokens,
            prefix=" " if endpoint == "completions" else "",
        )

    def _base_job(self, prompt_ids: list[int], parsed: GenerationRequest, max_new_tokens: int) -> BaseJob:
        return BaseJob(prompt_ids, parsed, max_new_tokens)

    def _body(
        self, parsed: GenerationRequest, endpoint: str, routing: Routing, result: GenerationResult
    ) -> dict:
        builder = chat_response if endpoint == "chat" else completion_response
        response_id = new_id("chatcmpl" if endpoint == "chat" else "cmpl")
        return builder(
            response_id,
            self.response_model(parsed),
            result.text,
            result.finish_reason,
            routing,
            result.prompt_tokens,
            result.completion_tokens,
        )

    def _submit_streamed(
        self, job: BaseJob | EditJob
    ) -> tuple[asyncio.Future, asyncio.Queue, threading.Event]:
        """Submit a streamed job: its result, the queue its text pieces arrive in, and its cancel switch."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def on_text(text: str) -> None:
            # Called on the generation thread, for this row of its batch; a loop already closed (the server
            # stopping) must not fail the other rows.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, ("text", text))

        future = asyncio.wrap_future(self.batcher.submit(job, on_text, cancelled))
        # The worker's text callbacks are queued before the future completes, so "done" comes last.
        future.add_done_callback(lambda _: queue.put_nowait(("done", None)))
        return future, queue, cancelled

    async def _stream(
        self,
        submitted: tuple[asyncio.Future, asyncio.Queue, threading.Event],
        parsed: GenerationRequest,
        endpoint: str,
        routing: Routing,
        started: float,
    ) -> AsyncIterator[str]:
        future, queue, cancelled = submitted
        response_id = new_id("chatcmpl" if endpoint == "chat" else "cmpl")
        created = int(time.time())
        model = self.response_model(parsed)
        status, first = 200, True

        def chunk(**fields: Any) -> dict[str, Any]:
            if endpoint == "chat":
                return chat_chunk(response_id, created, model, routing, **fields)
            return completion_chunk(response_id, created, model, routing, **fields)

        try:
            if endpoint == "chat":
                yield sse(chunk(delta={"role": "assistant", "content": ""}))
            while True:
                kind, value = await queue.get()
                if kind == "done":
                    break
                if first:
                    self.metrics.first_token.labels(endpoint, routing.route).observe(
                        time.perf_counter() - started
                    )
                    first = False
                yield sse(chunk(delta={"content": value}) if endpoint == "chat" else chunk(text=value))
            try:
                result: GenerationResult = future.result()
            except Exception as error:  # the status line is sent already: report the failure in the stream
                logger.exception("generation failed during a stream")
                status = 500
                yield sse(error_body(f"generation failed: {type(error).__name__}", error_type="server_error"))
                return
            yield sse(
                chunk(delta={}, finish_reason=result.finish_reason)
                if endpoint == "chat"
                else chunk(finish_reason=result.finish_reason)
            )
            if parsed.include_usage:
                yield sse(chunk(usage=(result.prompt_tokens, result.completion_tokens)))
            yield "data: [DONE]\n\n"
        finally:
            # A client that went away stops the generation at its next token.
            cancelled.set()
            self._record(endpoint, routing.route, status, started)

    # ------------------------------------------------------------------ proxy
    # ------------------------------------------------------------------ edits
    def add_edits(self, edits: list[Any]) -> list[int]:
        ids = self.router.add_edits(edits)
        return ids

    def remove_edit(self, edit_id: int) -> None:
        self.router.remove_edit(edit_id)


def _edit_json(edit_id: int, edit: Any) -> dict[str, Any]:
    return {"id": edit_id, "object": "edit", **edit.to_dict()}


#: Edit ids are 64-bit signed integers in every store (SQLite, PostgreSQL, FAISS).
MAX_EDIT_ID = 2**63 - 1


def _parse_edit_id(text: str) -> int:
    # ASCII digits only: int() also reads signs, spaces, underscores and other scripts' digits.
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_EDIT_ID)):
        raise APIError(400, f"an edit id is a non-negative integer, got {text[:40]!r}", param="edit_id")
    edit_id = int(text)
    if edit_id > MAX_EDIT_ID:
        raise APIError(400, f"an edit id is at most {MAX_EDIT_ID}, got {edit_id}", param="edit_id")
    return edit_id


def create_app(
    router: EditRouter,
    *,
    generator: BaseModelGenerator | None = None,
    upstream: str | None = None,
    settings: ServeSettings | None = None,
) -> FastAPI:
    """The OpenAI-compatible app: local mode with ``generator``, proxy mode with ``upstream``.

    Args:
        router: the edit side (an :class:`~serac.memory.EditMemory`): routing, answers and the edit store,
            whose kind (memory, file, database) decides how edit changes are made durable.
        generator: the base model's generation (local mode).
        upstream: the base URL of an OpenAI-compatible API, e.g. ``http://127.0.0.1:8000/v1`` (proxy mode).
        settings: names, tokens and limits.

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> model = EditableModel.from_defaults()  # doctest: +SKIP
        >>> app = create_app(EditRouter.from_editable_model(model),
        ...                  generator=BaseModelGenerator(model.base_model, model.tokenizer))  # doctest: +SKIP
        >>> uvicorn.run(app, port=8080)  # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    store = router.store
    server = _Server(router, settings, generator, upstream)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if server.upstream is not None:
            server.upstream.open()
        logger.info(
            "Serving %s in %s mode; edits: %s",
            settings.model_name,
            server.mode,
            description(store),
        )
        try:
            yield
        finally:
            if server.upstream is not None:
                await server.upstream.close()
            server.routing_pool.shutdown(wait=False, cancel_futures=True)
            server.writes_pool.shutdown(wait=False, cancel_futures=True)
            server.batcher.close()
            server.parsing_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="serac", summary="OpenAI-compatible serving with live edits", lifespan=lifespan)
    app.state.serac = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(error.detail), error_type="invalid_request_error"), status_code=error.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(str(error.errors()[:3])), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal server error", error_type="server_error"), status_code=500)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await server.complete(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await server.complete(request, "completions")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        server.check_inference(request)
        if server.upstream is not None:
            return await server.upstream.models(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": settings.model_name, "object": "model", "created": 0, "owned_by": "serac"}],
            }
        )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "mode": server.mode,
            "model": settings.model_name,
            "editing": router.enabled,
            "store": describe(store),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        server.metrics.edits_stored.set(len(store))
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/edits")
    async def add_edits(request: Request) -> JSONResponse:
        status = 500
        try:
            server.check_admin(request)
            _, edits = await server.read_json(request, parse_edits, root="edits", note="; nothing was stored")
            ids = await server.run(server.writes_pool, server.add_edits, edits)
            status = 200
        except APIError as error:
            status = error.status_code
            raise
        finally:
            server.metrics.edit_writes.labels("add", str(status)).inc()
        server.metrics.edits_stored.set(len(store))
        logger.info("Stored %d edit(s): ids %s", len(ids), ids)
        return JSONResponse(
            {
                "object": "list",
                "ids": ids,
                "data": [_edit_json(edit_id, edit) for edit_id, edit in zip(ids, edits, strict=True)],
            }
        )

    @app.get("/v1/edits")
    async def list_edits(request: Request) -> JSONResponse:
        server.check_read_edits(request)
        items = store.items()
        return JSONResponse({"object": "list", "data": [_edit_json(i, e) for i, e in items]})

    @app.get("/v1/edits/{edit_id}")
    async def get_edit(request: Request, edit_id: str) -> JSONResponse:
        server.check_read_edits(request)
        number = _parse_edit_id(edit_id)
        try:
            edit = store.get(number)
        except (UnknownEditError, KeyError):
            raise APIError(404, f"no edit with id {number}", param="edit_id", code="edit_not_found") from None
        return JSONResponse(_edit_json(number, edit))

    @app.delete("/v1/edits/{edit_id}")
    async def delete_edit(request: Request, edit_id: str) -> JSONResponse:
        status = 500
        try:
            server.check_admin(request)
            number = _parse_edit_id(edit_id)
            try:
                await server.run(server.writes_pool, server.remove_edit, number)
            except (UnknownEditError, KeyError):
                raise APIError(
                    404, f"no edit with id {number}", param="edit_id", code="edit_not_found"
                ) from None
            status = 200
        except APIError as error:
            status = error.status_code
            raise
        finally:
            server.metrics.edit_writes.labels("remove", str(status)).inc()
        server.metrics.edits_stored.set(len(store))
        logger.info("Removed edit %d", number)
        return JSONResponse({"id": number, "object": "edit", "deleted": True})

    return app
