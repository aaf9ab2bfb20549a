"""``serac serve``: an OpenAI-compatible server with live edits, in front of a local model or an upstream API.

Examples:
    serac serve --model HuggingFaceTB/SmolLM2-135M-Instruct --editor my-editor/ --store edits.safetensors
    serac serve --upstream http://127.0.0.1:8000/v1 --editor my-editor/ --admin-token "$TOKEN"
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_app", "build_parser", "main"]

logger = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "SERAC_ADMIN_TOKEN"
API_KEY_ENV = "SERAC_API_KEY"
UPSTREAM_API_KEY_ENV = "SERAC_UPSTREAM_API_KEY"
SHUTDOWN_TIMEOUT_SECONDS = 10
# The same defaults as ServeSettings', kept here so that the parser does not import the app and FastAPI.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 32
#: The names of ``serac.offline.DTYPES``.
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serac serve",
        description="Serve a model through an OpenAI-compatible API whose answers follow live edits.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        help="local mode: a Hugging Face model id or path, or a packaged model's name (gemma3-270m) "
        "(default: the offline SmolLM2-135M-Instruct)",
    )
    source.add_argument(
        "--upstream",
        help="proxy mode: base URL of an OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1); "
        "out-of-scope requests are forwarded to it",
    )
    parser.add_argument(
        "--editor",
        help="a saved SERAC editor folder (EditableModel.save_pretrained or serac train output); "
        "default: the offline default parts",
    )
    parser.add_argument(
        "--store",
        help="where edits live: a database URL (sqlite:///..., postgresql://...) or SQLite file path, shared "
        "by every server on it, or a snapshot file (*.safetensors) rewritten after every change; a store "
        "never written before starts with the SERAC folder's edits; default: in memory",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--admin-token",
        default=os.environ.get(ADMIN_TOKEN_ENV),
        help=f"bearer token for changing edits (or ${ADMIN_TOKEN_ENV}); without one the edits API is read-only",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=None,
        help=f"a bearer token accepted for inference (repeatable; or ${API_KEY_ENV}, comma-separated); "
        "default: no key needed",
    )
    parser.add_argument(
        "--upstream-api-key",
        default=os.environ.get(UPSTREAM_API_KEY_ENV),
        help=f"key sent to the upstream (or ${UPSTREAM_API_KEY_ENV}); without one the upstream gets no "
        "Authorization header (a client's own header is never passed on)",
    )
    parser.add_argument("--served-model-name", help="the model id this server reports")
    parser.add_argument("--max-tokens", type=int, default=1024, help="most new tokens per request")
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="largest request body read, in bytes; a larger one gets a 413 (default: 4 MiB)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="most concurrent requests decoded together (default: 32; 1: one at a time)",
    )
    parser.add_argument(
        "--batching",
        choices=["continuous", "dynamic"],
        default="continuous",
        help="local mode: 'continuous' (requests join and leave the running batch between decoding steps; "
        "models and settings it does not cover fall back to 'dynamic') or 'dynamic' (the requests waiting "
        "for a pass share one generate() call) (default: continuous)",
    )
    parser.add_argument(
        "--speculative-upstream",
        action="store_true",
        help="proxy mode: send each request upstream while it is routed (out-of-scope requests wait for no "
        "routing); an in-scope one is dropped there once routed, after the upstream may have read it",
    )
    parser.add_argument(
        "--separate-counterfactual",
        action="store_true",
        help="local mode: answer edit-route requests with the trained counterfactual model on a thread of its "
        "own, even when it shares the base model's lower blocks (by default its rows then decode in the base "
        "model's batch, on its own top blocks)",
    )
    parser.add_argument(
        "--no-edits",
        action="store_true",
        help="serve the base model only: no routing, edits API read-only (a baseline for measurements)",
    )
    parser.add_argument(
        "--counterfactual",
        choices=["trained", "in-context"],
        default=None,
        help="what answers in-scope requests: 'trained', the editor folder's counterfactual model, or "
        "'in-context', the served model itself with the edit in the request (a system message before a chat, "
        "a prefix of a prompt), here or upstream in proxy mode; default: what the folder holds",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default=None,
        help="local mode: the type the base model's weights are loaded in; bfloat16 halves their memory and "
        "is faster where the hardware computes in it (GPUs, recent CPUs) (default: float32)",
    )
    parser.add_argument(
        "--counterfactual-dtype",
        choices=DTYPE_NAMES,
        default=None,
        help="the type a trained counterfactual model's weights are loaded in (default: as saved); see "
        "docs/serving.md for what bfloat16 changes",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _default_parts_dir() -> Path:
    from serac.training.recipe import default_parts_dir

    return default_parts_dir()


def build_app(args: argparse.Namespace) -> Any:
    """Load the parts named by the parsed arguments and return the app (without starting it)."""
    from serac.memory import EditMemory
    from serac.serve.app import ServeSettings, create_app
    from serac.serve.engine import BaseModelGenerator, EditRouter

    api_keys = tuple(args.api_key or [k for k in os.environ.get(API_KEY_ENV, "").split(",") if k])
    if args.upstream is not None and args.dtype is not None:
        raise ValueError(
            "--dtype is the type of local mode's model; in proxy mode the upstream serves the model"
        )
    editor = args.editor or _default_parts_dir()
    if args.upstream is None:
        from serac.modeling import EditableModel

        model = EditableModel.from_pretrained(
            args.model,
            editor,
            store=args.store,
            counterfactual=args.counterfactual,
            counterfactual_dtype=args.counterfactual_dtype,
            dtype=args.dtype,
        )
        router = EditRouter.from_editable_model(model, enabled=not args.no_edits)
        generator = BaseModelGenerator(model.base_model, model.tokenizer)
        name = args.served_model_name or args.model or "smollm2-135m-instruct"
        upstream = None
    else:
        memory = EditMemory.from_pretrained(
            editor,
            store=args.store,
            counterfactual=args.counterfactual,
            counterfactual_dtype=args.counterfactual_dtype,
        )
        router = EditRouter(memory, enabled=not args.no_edits)
        generator = None
        name = args.served_model_name or "serac-proxy"
        upstream = args.upstream
    settings = ServeSettings(
        model_name=name,
        admin_token=args.admin_token or None,
        api_keys=api_keys,
        max_tokens=args.max_tokens,
        upstream_api_key=args.upstream_api_key or None,
        max_request_bytes=args.max_request_bytes,
        max_batch_size=args.max_batch_size,
        batching=args.batching,
        speculative_upstream=args.speculative_upstream,
        shared_blocks=not args.separate_counterfactual,
    )
    return create_app(router, generator=generator, upstream=upstream, settings=settings)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line), load the parts and serve until interrupted."""
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.store is None:
        logger.warning("No --store: edits posted to this server are kept in memory and lost when it stops")
    app = build_app(args)
    # Requests still queued at shutdown are not worth waiting for minutes; their clients get a reset.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_SECONDS,
    )


if __name__ == "__main__":
    main()
