"""The model work behind the server: routing a query, answering it under an edit, generating with the base model.

Everything here is synchronous and runs on the server's worker threads, never on the event loop.

* :class:`EditRouter` is the server's view of an :class:`~serac.memory.EditMemory` (scope classifier,
  counterfactual model, edit store), which needs no base model. It is all proxy mode has, and what local
  mode uses to route. Each call returns the routing of *that* call, taken from the scope classifier's
  decision, so concurrent requests never share routing state.
* :class:`BaseModelGenerator` runs the base model's own ``generate()`` for out-of-scope requests in local
  mode, streaming text as it is produced.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from serac.edits import Edit
from serac.memory import EditMemory
from serac.scope import ScopeDecision
from serac.serve.protocol import APIError, GenerationRequest, Routing
from serac.store import EditStore

logger = logging.getLogger(__name__)

__all__ = ["BaseModelGenerator", "EditRouter", "GenerationResult"]

#: Routing when editing is disabled or nothing was in scope.
BASE_ROUTE = "base_model"
EDIT_ROUTE = "edit"


@dataclass(frozen=True)
class GenerationResult:
    """One answer: its text, why it ended (``"stop"`` or ``"length"``) and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class _TextAccumulator:
    """Decodes generated tokens into text, cuts at stop strings and hands out new text as it is final.

    Streamed and non-streamed answers go through this same object, so both give the same text.
    """

    def __init__(
        self, tokenizer: Any, stops: Sequence[str], on_text: Callable[[str], None] | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.on_text = on_text
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False
        # Text that might be the start of a stop string is held back until it is known not to be one.
        self._holdback = max((len(stop) for stop in self.stops), default=1) - 1

    def add(self, token_ids: Sequence[int]) -> None:
        if self.stopped:
            return
        self.ids.extend(token_ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its other tokens
            return
        self._update(text)

    def finish(self) -> str:
        if not self.stopped:
            self._update(self.tokenizer.decode(self.ids, skip_special_tokens=True), final=True)
        self._emit(len(self.text))
        return self.text

    def _update(self, text: str, final: bool = False) -> None:
        cut = min((index for index in (text.find(stop) for stop in self.stops) if index >= 0), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
        self.text = text
        self._emit(len(text) if (self.stopped or final) else len(text) - self._holdback)

    def _emit(self, end: int) -> None:
        if end > self.emitted:
            if self.on_text is not None:
                self.on_text(self.text[self.emitted : end])
            self.emitted = end


class _Streamer:
    """A ``generate()`` streamer feeding new token ids to an accumulator (the first call is the prompt)."""

    def __init__(self, accumulator: _TextAccumulator) -> None:
        self.accumulator = accumulator
        self.seen_prompt = False
        self.generated: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        ids = value.reshape(-1).tolist()
        self.generated.extend(ids)
        self.accumulator.add(ids)

    def end(self) -> None:
        pass


class _StopWhen:
    """A stopping criterion: stop at a stop string or when the client went away."""

    def __init__(self, accumulator: _TextAccumulator, cancelled: threading.Event | None) -> None:
        self.accumulator = accumulator
        self.cancelled = cancelled

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        stop = self.accumulator.stopped or (self.cancelled is not None and self.cancelled.is_set())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class BaseModelGenerator:
    """The base model's own generation for out-of-scope requests (local mode).

    Args:
        model: a Hugging Face causal or seq2seq LM, used as is.
        tokenizer: its tokenizer; chat requests need its chat template.
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = getattr(model.config, "max_position_embeddings", None)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        )

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids the base model reads: the chat template applied to the messages, or the prompt."""
        if request.messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise APIError(
                    400,
                    "this model has no chat template; use /v1/completions",
                    param="messages",
                    code="no_chat_template",
                )
            # The rendered template already holds the model's special tokens; adding them again would
            # double a BOS token.
            text = self.tokenizer.apply_chat_template(
                request.messages, tokenize=False, add_generation_prompt=True
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(request.prompt)["input_ids"]
        if self.max_length is not None and len(ids) >= self.max_length:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens; this model reads at most {self.max_length}",
                code="context_length_exceeded",
            )
        return ids

    def generate(
        self,
        prompt_ids: list[int],
        request: GenerationRequest,
        max_new_tokens: int,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> GenerationResult:
        """Run ``generate()`` on one prompt; ``on_text`` receives the answer's text piece by piece."""
        from transformers import StoppingCriteriaList

        if self.max_length is not None and not self.is_encoder_decoder:
            max_new_tokens = max(1, min(max_new_tokens, self.max_length - len(prompt_ids)))
        accumulator = _TextAccumulator(self.tokenizer, request.stop, on_text)
        streamer = _Streamer(accumulator)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.pad_id,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_StopWhen(accumulator, cancelled)]),
        }
        kwargs.update(_sampling_kwargs(request))
        with torch.no_grad():
            self.model.generate(**kwargs)
        text = accumulator.finish()
        generated = [token for token in streamer.generated if token not in self.eos_ids]
        ended_by_eos = any(token in self.eos_ids for token in streamer.generated)
        finish = "stop" if (accumulator.stopped or ended_by_eos) else "length"
        return GenerationResult(text, finish, len(prompt_ids), len(generated))


def _sampling_kwargs(request: GenerationRequest) -> dict[str, Any]:
    if request.temperature is None:
        return {}  # the checkpoint's own generation settings
    if request.temperature == 0:
        # Greedy: also clear sampling settings a checkpoint's generation_config may carry.
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    kwargs: dict[str, Any] = {"do_sample": True, "temperature": request.temperature}
    if request.top_p is not None:
        kwargs["top_p"] = request.top_p
    return kwargs


class EditRouter:
    """The server's view of an :class:`~serac.memory.EditMemory`: route a query, answer it under its edit.

    All the edit-side work (routing, answering, storing) is the memory's, so the server and the Python API
    route alike; this class adds what a server needs: routing records and answers cut to the request's
    token budget and stop strings, counted in the served model's tokens.

    Args:
        memory: the edit store, the scope classifier and the counterfactual model.
        tokenizer: counts and truncates answers in the served model's tokens (the counterfactual model's
            tokenizer when not given, as in proxy mode where the upstream's tokenizer is unknown).
        enabled: ``False`` routes every query to the base model without classifying (a plain server).
    """

    def __init__(self, memory: EditMemory, *, tokenizer: Any = None, enabled: bool = True) -> None:
        if not isinstance(memory, EditMemory):
            raise TypeError(f"memory must be an EditMemory, got {type(memory).__name__}")
        self.memory = memory
        self.tokenizer = tokenizer if tokenizer is not None else memory.counterfactual_model.tokenizer
        self.enabled = enabled

    @property
    def store(self) -> EditStore:
        return self.memory.store

    @classmethod
    def from_editable_model(cls, model: Any, *, enabled: bool = True) -> EditRouter:
        """The memory of an :class:`~serac.modeling.EditableModel`, counting tokens with its tokenizer."""
        return cls(model.memory, tokenizer=model.tokenizer, enabled=enabled)

    def route(self, query: str) -> tuple[Routing, ScopeDecision]:
        """The routing of one query, from this call's own scope decision."""
        (routed,) = self.route_many([query])
        return routed

    def route_many(self, queries: Sequence[str]) -> list[tuple[Routing, ScopeDecision]]:
        """The routing of each query, decided for each on its own (one batched pass of the classifier)."""
        if not self.enabled:
            return [(Routing(BASE_ROUTE), ScopeDecision(in_scope=False)) for _ in queries]
        routed = []
        for decision in self.memory.route(list(queries)):
            if decision.in_scope:
                routed.append((Routing(EDIT_ROUTE, decision.edit_id, decision.score), decision))
            else:
                routed.append((Routing(BASE_ROUTE, None, decision.score), decision))
        return routed

    def answer(
        self,
        decision: ScopeDecision,
        query: str,
        max_new_tokens: int,
        stops: Sequence[str] = (),
        *,
        request: GenerationRequest | None = None,
        prompt_tokens: int | None = None,
    ) -> GenerationResult:
        """The counterfactual model's answer to ``query`` under the decision's edit.

        The edit is the one the decision captured, so an edit removed meanwhile still answers the request
        that was routed to it. ``request`` brings the caller's sampling settings (``temperature``,
        ``top_p``), as the base route applies them. ``prompt_tokens`` is the prompt's length as the base
        route counts it (the templated prompt, in local mode); without it the query's own tokens are
        counted. An answer cut at ``max_new_tokens`` ends with ``"length"``, as on the base route.
        """
        if not decision.in_scope or decision.edit is None:
            raise ValueError("answer() needs an in-scope decision")
        generation = _sampling_kwargs(request) if request is not None else {}
        # One token past the budget tells an answer that was cut from one that ended there.
        (answer,) = self.memory.answer([decision], [query], max_new_tokens=max_new_tokens + 1, **generation)
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        finish = "stop"
        if len(ids) > max_new_tokens:
            ids, finish = ids[:max_new_tokens], "length"
            answer = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in stops:
            if stop in answer:
                answer, finish = answer[: answer.index(stop)], "stop"
                ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if prompt_tokens is None:
            prompt_tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        return GenerationResult(answer, finish, prompt_tokens, len(ids))

    # ------------------------------------------------------------------ edits
    def add_edits(self, edits: Sequence[Edit]) -> list[int]:
        return self.memory.edit(list(edits))

    def remove_edit(self, edit_id: int) -> None:
        self.memory.remove_edits([edit_id])
