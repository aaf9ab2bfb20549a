"""The settings of a server: names, tokens and limits."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "DEFAULT_MAX_REQUEST_BYTES", "ServeSettings"]

#: The largest request body a server reads by default: far above any chat a context window holds.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: The most requests decoded together by default.
DEFAULT_MAX_BATCH_SIZE = 32


@dataclass
class ServeSettings:
    """Settings of a server.

    Args:
        model_name: the model id the server reports (``/v1/models`` and the ``model`` field of answers).
        admin_token: the bearer token that may change edits; without one the edits API is read-only.
        api_keys: bearer tokens accepted for inference and reading edits; none: open.
        max_tokens: the most new tokens one request may ask for (and the chat default).
        completion_max_tokens: the default of ``/v1/completions`` (OpenAI's is 16).
        upstream_api_key: the key sent to the upstream in proxy mode; without one the upstream gets no
            ``Authorization`` header. A client's own header is never passed on: it may hold the admin token.
        upstream_timeout: seconds to wait for the upstream.
        max_request_bytes: the largest request body read; a larger one gets a 413 before it is parsed.
        max_batch_size: the most requests decoded together (local mode's base model, and one call of the
            counterfactual model); 1 answers them one at a time.
        batching: local mode's base model: ``"continuous"`` (requests join and leave the running batch
            between decoding steps, see :mod:`serac.serve.continuous`; what it does not cover falls back to
            dynamic batching) or ``"dynamic"`` (the requests waiting for a pass share one ``generate()`` call).
        speculative_upstream: proxy mode: send each request upstream while it is routed, and drop it there
            when it is in scope (see :mod:`serac.serve.upstream`): out-of-scope requests then wait for no
            routing, and the upstream reads the prompts of in-scope ones too.
        shared_blocks: local mode with continuous batching: a trained counterfactual model that shares the
            base model's lower blocks (as the default recipe's does) decodes its rows in the base model's
            batch, on its own top blocks (see :mod:`serac.serve.towers`); ``False`` answers them on a thread
            of its own, in calls of the whole model.
    """

    model_name: str = "serac"
    admin_token: str | None = None
    api_keys: tuple[str, ...] = ()
    max_tokens: int = 1024
    completion_max_tokens: int = 16
    upstream_api_key: str | None = None
    upstream_timeout: float = 600.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batching: str = "continuous"
    speculative_upstream: bool = False
    shared_blocks: bool = True

    def __post_init__(self) -> None:
        if self.admin_token is not None and not self.admin_token:
            raise ValueError("admin_token must not be empty")
        if self.admin_token is not None and self.admin_token in self.api_keys:
            raise ValueError("the admin token must differ from every inference API key")
        if self.max_tokens < 1 or self.completion_max_tokens < 1:
            raise ValueError("max_tokens and completion_max_tokens must be >= 1")
        if isinstance(self.max_request_bytes, bool) or not (
            isinstance(self.max_request_bytes, int) and self.max_request_bytes >= 1
        ):
            raise ValueError(f"max_request_bytes must be a positive integer, got {self.max_request_bytes!r}")
        if isinstance(self.max_batch_size, bool) or not (
            isinstance(self.max_batch_size, int) and self.max_batch_size >= 1
        ):
            raise ValueError(f"max_batch_size must be a positive integer, got {self.max_batch_size!r}")
        if self.batching not in ("continuous", "dynamic"):
            raise ValueError(f"batching must be 'continuous' or 'dynamic', got {self.batching!r}")

    def __repr__(self) -> str:  # keep tokens out of logs and tracebacks
        return (
            f"ServeSettings(model_name={self.model_name!r}, admin_token={'set' if self.admin_token else None}, "
            f"api_keys={len(self.api_keys)}, max_tokens={self.max_tokens}, "
            f"max_request_bytes={self.max_request_bytes}, max_batch_size={self.max_batch_size}, "
            f"batching={self.batching!r})"
        )
