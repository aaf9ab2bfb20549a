"""Serving: an OpenAI-compatible HTTP server and proxy whose answers follow live edits.

Needs the ``serve`` extra (``pip install "serac-memory[serve]"``). The command is ``serac serve``
(:func:`serac.serve.cli.main`); :func:`create_app` builds the app for any ASGI server.

Example:
    >>> from serac import EditableModel  # doctest: +SKIP
    >>> from serac.serve import BaseModelGenerator, EditRouter, create_app  # doctest: +SKIP
    >>> model = EditableModel.from_defaults()  # doctest: +SKIP
    >>> app = create_app(EditRouter.from_editable_model(model),
    ...                  generator=BaseModelGenerator(model.base_model, model.tokenizer))  # doctest: +SKIP
"""

from serac.serve.app import ServeSettings, create_app
from serac.serve.engine import BaseModelGenerator, EditRouter, GenerationResult
from serac.serve.protocol import ROUTING_FIELD, ROUTING_HEADER, APIError, Routing

__all__ = [
    "ROUTING_FIELD",
    "ROUTING_HEADER",
    "APIError",
    "BaseModelGenerator",
    "EditRouter",
    "GenerationResult",
    "Routing",
    "ServeSettings",
    "create_app",
]
