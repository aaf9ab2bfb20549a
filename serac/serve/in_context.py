"""The in-context kind in the server: an in-scope request is answered by the base model with the edit in it.

With an :class:`~serac.in_context.InContextCounterfactual` as the counterfactual model, the server answers an
in-scope request on the base route's path with the edit put in the request: a chat gets it as a system
message before the conversation (:func:`~serac.in_context.messages_with_edit`), a completion as a prefix of
its prompt (:func:`~serac.in_context.prompt_with_edit`). In local mode the base model in this process
generates for the changed request, streaming, stop strings and sampling as for any request; in proxy mode the
changed body goes to the upstream, whose answer comes back with the routing of an edited answer.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from serac.edits import Edit
from serac.in_context import InContextConfig, InContextCounterfactual, messages_with_edit, prompt_with_edit
from serac.serve.protocol import GenerationRequest

__all__ = ["in_context_config", "request_with_edit"]


def in_context_config(router: Any) -> InContextConfig | None:
    """The in-context settings of a router's edit memory, ``None`` when its counterfactual model is trained."""
    counterfactual = router.memory.counterfactual_model
    return counterfactual.config if isinstance(counterfactual, InContextCounterfactual) else None


def request_with_edit(
    parsed: GenerationRequest, raw: bytes, edit: Edit | Sequence[Edit], config: InContextConfig
) -> tuple[GenerationRequest, bytes]:
    """The request with the edit (with its linked edits, when given several) in it: as parsed (what local mode generates from) and as the body a proxy sends.

    Only the messages (or the prompt) change; every other field of the body goes to the upstream as the
    client wrote it. The query the request was routed by is unchanged.
    """
    body = json.loads(raw)
    if parsed.messages is not None:
        body["messages"] = messages_with_edit(body["messages"], edit, config)
        parsed = dataclasses.replace(parsed, messages=messages_with_edit(parsed.messages, edit, config))
    else:
        prompt = body["prompt"]
        body["prompt"] = (
            [prompt_with_edit(text, edit, config) for text in prompt]
            if isinstance(prompt, list)
            else prompt_with_edit(prompt, edit, config)
        )
        parsed = dataclasses.replace(parsed, prompt=prompt_with_edit(parsed.prompt or "", edit, config))
    return parsed, json.dumps(body, ensure_ascii=False).encode("utf-8")
