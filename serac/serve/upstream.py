"""The upstream of proxy mode: an OpenAI-compatible server (vLLM, TGI, llama.cpp, a hosted API, another
``serac serve``) that answers the requests this server does not answer itself.

A request goes upstream with its body unchanged and only the upstream's own key (``--upstream-api-key``):
a client's ``Authorization`` header may hold the admin token, which must not leave this server. The answer
comes back as it arrives, streamed or not, with the ``serac`` routing field added to each JSON payload; the
upstream's errors come back as it sent them, with the headers clients act on (``Retry-After``, rate limits).

With speculation (``--speculative-upstream``) a request is sent upstream while it is routed: an
out-of-scope request (the common case) then pays nothing for routing, and an in-scope one is dropped
upstream once its routing is known (the upstream may have read its prompt by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serac.serve.metrics import ServerMetrics
from serac.serve.protocol import ROUTING_FIELD, APIError, Routing, error_body, routing_header, sse
from serac.serve.settings import ServeSettings

__all__ = ["Upstream"]

#: The upstream's response headers passed back to the client: the ones OpenAI clients act on (backing off).
UPSTREAM_HEADERS_FOR_CLIENTS = ("retry-after", "retry-after-ms", "x-should-retry")
UPSTREAM_HEADER_PREFIXES_FOR_CLIENTS = ("x-ratelimit-",)


def _headers_for_clients(upstream: httpx.Response) -> dict[str, str]:
    """The upstream's rate-limit and retry headers, which a client needs to back off; nothing else."""
    return {
        name: value
        for name, value in upstream.headers.items()
        if name in UPSTREAM_HEADERS_FOR_CLIENTS or name.startswith(UPSTREAM_HEADER_PREFIXES_FOR_CLIENTS)
    }


def _with_routing(line: str, routing: Routing) -> str:
    """An upstream SSE line with the routing field added to its JSON payload; other lines unchanged."""
    if not line.startswith("data:"):
        return line
    payload = line[5:].strip()
    if not payload.startswith("{"):
        return line  # "[DONE]" and anything that is not a JSON object pass through as they are
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        return line
    data[ROUTING_FIELD] = routing.to_json()
    return "data: " + json.dumps(data, ensure_ascii=False)


def _unreachable(error: Exception) -> APIError:
    return APIError(
        502,
        f"the upstream did not answer: {type(error).__name__}",
        error_type="upstream_error",
        code="upstream_unreachable",
    )


class Upstream:
    """The server behind a proxy: sends requests to it and relays its answers.

    Args:
        url: its base URL, e.g. ``http://127.0.0.1:8000/v1``.
        settings: the proxy's settings (the upstream's key and timeout).
        metrics: the proxy's metrics (time to first token of relayed streams).
        record: called as ``record(endpoint, route, status, started)`` when a relayed stream ends.
    """

    def __init__(
        self,
        url: str,
        settings: ServeSettings,
        metrics: ServerMetrics,
        record: Callable[[str, str, int, float], None],
    ) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        self.metrics = metrics
        self.record = record
        self.http: httpx.AsyncClient | None = None

    def open(self) -> None:
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(self.settings.upstream_timeout, connect=10.0))

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    def headers(self, request: Request) -> dict[str, str]:
        """The headers of a request to the upstream: the upstream's own key, never the client's header
        (it may be the admin token, which must not leave this server)."""
        headers = {"content-type": "application/json", "accept": request.headers.get("accept", "*/*")}
        if self.settings.upstream_api_key:
            headers["authorization"] = f"Bearer {self.settings.upstream_api_key}"
        return headers

    async def send(self, request: Request, endpoint: str, raw: bytes) -> httpx.Response:
        """Send the request body, unchanged; returns the response once its headers are in (its body is
        read by :meth:`respond`, or dropped by :meth:`drop`)."""
        assert self.http is not None  # opened by the app's lifespan
        path = "/chat/completions" if endpoint == "chat" else "/completions"
        upstream_request = self.http.build_request(
            "POST", self.url + path, content=raw, headers=self.headers(request)
        )
        try:
            return await self.http.send(upstream_request, stream=True)
        except httpx.HTTPError as error:
            raise _unreachable(error) from None

    def speculate(self, request: Request, endpoint: str, raw: bytes) -> asyncio.Task:
        """:meth:`send` started now, while the request is routed."""
        return asyncio.ensure_future(self.send(request, endpoint, raw))

    @staticmethod
    def drop(sent: asyncio.Task) -> None:
        """Abandon a speculative request: cancel it, or close its response if it came already."""

        async def closing() -> None:
            with contextlib.suppress(asyncio.CancelledError, APIError):
                response = await sent
                await response.aclose()

        sent.cancel()
        asyncio.ensure_future(closing())

    async def respond(
        self, response: httpx.Response, endpoint: str, stream: bool, routing: Routing, started: float
    ) -> Response:
        """The upstream's answer for the client: streamed as it arrives, or read whole, with the routing
        field added; errors (and anything unexpected) as the upstream sent them."""
        content_type = response.headers.get("content-type", "")
        headers = {**_headers_for_clients(response), **routing_header(routing)}
        if stream and response.status_code == 200 and content_type.startswith("text/event-stream"):
            return StreamingResponse(
                self._relay(response, endpoint, routing, started),
                status_code=200,
                media_type="text/event-stream",
                headers=headers,
            )
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        if response.status_code == 200 and content_type.startswith("application/json"):
            with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                data = json.loads(content)
                if isinstance(data, dict):
                    data[ROUTING_FIELD] = routing.to_json()
                    return JSONResponse(data, headers=headers)
        return Response(
            content, status_code=response.status_code, media_type=content_type or None, headers=headers
        )

    async def models(self, request: Request) -> Response:
        """The upstream's ``/models``, passed back."""
        assert self.http is not None
        try:
            response = await self.http.get(self.url + "/models", headers=self.headers(request))
        except httpx.HTTPError as error:
            raise APIError(
                502, f"the upstream did not answer: {type(error).__name__}", error_type="upstream_error"
            ) from None
        return Response(
            response.content,
            status_code=response.status_code,
            media_type=response.headers.get("content-type"),
            headers=_headers_for_clients(response),
        )

    async def _relay(
        self, response: httpx.Response, endpoint: str, routing: Routing, started: float
    ) -> AsyncIterator[str]:
        status, first = 200, True
        try:
            async for line in response.aiter_lines():
                if first:
                    self.metrics.first_token.labels(endpoint, routing.route).observe(
                        time.perf_counter() - started
                    )
                    first = False
                yield _with_routing(line, routing) + "\n"
        except httpx.HTTPError as error:
            status = 502
            yield sse(
                error_body(f"the upstream stream broke: {type(error).__name__}", error_type="upstream_error")
            )
        finally:
            await response.aclose()
            self.record(endpoint, routing.route, status, started)
