"""The model work behind the server: routing a query, answering it under an edit, generating with the base model.

Everything here is synchronous and runs on the server's worker threads, never on the event loop.

* :class:`EditRouter` is the server's view of an :class:`~serac.memory.EditMemory` (scope classifier,
  counterfactual model, edit store), which needs no base model. It is all proxy mode has, and what local
  mode uses to route. Each call returns the routing of *that* call, taken from the scope classifier's
  decision, so concurrent requests never share routing state.
* :class:`BaseModelGenerator` runs the base model's own ``generate()`` for out-of-scope requests in local
  mode, several prompts in one call (left-padded) when they share their sampling settings, streaming each
  one's text to its own caller as it is produced.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from serac.counterfactual import first_line
from serac.edits import Edit
from serac.memory import EditMemory
from serac.scope import ScopeDecision
from serac.serve.protocol import APIError, GenerationRequest, Routing
from serac.store import EditStore

logger = logging.getLogger(__name__)

__all__ = ["BaseModelGenerator", "CounterfactualRow", "EditRouter", "GenerationJob", "GenerationResult"]

#: The fewest common first tokens a batch's prompts read once, in a forward pass of their own.
MIN_SHARED_PREFIX = 8

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


@dataclass(frozen=True)
class CounterfactualRow:
    """A row a trained counterfactual model writes inside the base model's batch (see
    :mod:`serac.serve.towers`), as its ``generate()`` would: its edit's answer in ``writings`` is copied
    once ``after`` tokens of it are written (:class:`~serac.counterfactual.AnswerCopy`), the row ends with
    its first line, and its text is that line."""

    writings: list[list[int]] | None
    after: int


@dataclass
class GenerationJob:
    """One prompt for :meth:`BaseModelGenerator.generate_many`: its token ids, the request it comes from (its
    sampling settings and stop strings), its budget of new tokens, and where its text goes.

    ``on_text`` receives the answer's text piece by piece; setting ``cancelled`` stops the row at its next
    token (its client went away) without stopping the other rows of its batch. ``counterfactual`` marks a
    row of the counterfactual model in a continuous batch (it ignores the request's stop strings: they are
    applied to its answer afterwards).
    """

    prompt_ids: list[int]
    request: GenerationRequest
    max_new_tokens: int
    on_text: Callable[[str], None] | None = None
    cancelled: threading.Event | None = None
    counterfactual: CounterfactualRow | None = None


class _Row:
    """The progress of one prompt in a batch: its new tokens, its text, and whether it has ended."""

    def __init__(self, job: GenerationJob, tokenizer: Any, budget: int) -> None:
        self.job = job
        self.budget = budget
        stops = () if job.counterfactual is not None else job.request.stop
        self.accumulator = _TextAccumulator(tokenizer, stops, job.on_text)
        self.generated: list[int] = []
        self.ended_by_eos = False
        self.done = False

    def cancelled(self) -> bool:
        return self.job.cancelled is not None and self.job.cancelled.is_set()

    def add_token(self, token: int, eos_ids: set[int]) -> None:
        """The row's next token: it ends at an end of sequence, a stop string or its budget, or when its
        client went away."""
        if self.done:
            return
        if token in eos_ids:
            self.ended_by_eos = self.done = True
            return
        self.generated.append(token)
        self.accumulator.add([token])
        self.done = self.accumulator.stopped or len(self.generated) >= self.budget or self.cancelled()
        if self.job.counterfactual is not None and "\n" in self.accumulator.text.lstrip():
            self.done = True  # its answer is its first line

    def result(self) -> GenerationResult:
        text = self.accumulator.finish()
        if self.job.counterfactual is not None:
            text = first_line(text)
        finish = "stop" if (self.accumulator.stopped or self.ended_by_eos) else "length"
        return GenerationResult(text, finish, len(self.job.prompt_ids), len(self.generated))


class _RowsStop:
    """The stopping criterion of a batch, called by ``generate()`` after every step with the ids so far.

    Each row's new token goes to that row's text (and its caller) and the row stops on its own: at its own
    budget, stop string or end of sequence, or when its client went away. ``generate()`` leaves a stopped
    row alone (it pads it) while the others go on, and ends when every row has stopped.
    """

    def __init__(self, rows: Sequence[_Row], eos_ids: set[int]) -> None:
        self.rows = rows
        self.eos_ids = eos_ids

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            row.add_token(token, self.eos_ids)
        for row in self.rows:
            row.done = row.done or row.cancelled()
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


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
        # Prompts are tokenized on the server's request threads while the generation thread decodes with
        # ``tokenizer`` (and the counterfactual model may pad with it): a fast tokenizer is not safe to use
        # from two threads at once, so prompts get a copy of their own, one thread at a time.
        self._prompt_tokenizer = copy.deepcopy(tokenizer)
        self._prompt_lock = threading.Lock()
        #: Whether a batch reads its prompts' common beginning once (see :meth:`generate_many`).
        self.share_prefixes = True

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids the base model reads: the chat template applied to the messages, or the prompt.

        Safe to call from any thread, while the model generates.
        """
        with self._prompt_lock:
            return self._prompt_ids(self._prompt_tokenizer, request)

    def _prompt_ids(self, tokenizer: Any, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            if not getattr(tokenizer, "chat_template", None):
                raise APIError(
                    400,
                    "this model has no chat template; use /v1/completions",
                    param="messages",
                    code="no_chat_template",
                )
            # The rendered template already holds the model's special tokens; adding them again would
            # double a BOS token.
            text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(request.prompt)["input_ids"]
        if self.max_length is not None and len(ids) >= self.max_length:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens; this model reads at most {self.max_length}",
                code="context_length_exceeded",
            )
        return ids

    def budget(self, prompt_length: int, max_new_tokens: int) -> int:
        """The new tokens a prompt of ``prompt_length`` tokens may get: ``max_new_tokens``, within the context."""
        if self.max_length is not None and not self.is_encoder_decoder:
            return max(1, min(max_new_tokens, self.max_length - prompt_length))
        return max_new_tokens

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
        (result,) = self.generate_many(
            [GenerationJob(prompt_ids, request, max_new_tokens, on_text, cancelled)]
        )
        return result

    def generate_many(self, jobs: Sequence[GenerationJob]) -> list[GenerationResult]:
        """Answer several prompts in one ``generate()`` call; each row gets the answer it gets alone.

        The prompts are padded on the side the model reads padding on (the left for a decoder, the right for
        an encoder) and masked, so under greedy decoding each answer is, token for token, the one
        :meth:`generate` gives that prompt alone. A decoder reads the prompts' common beginning (a chat
        template's system prompt) once: its keys and values are computed for one row and shared by all, and
        the padding goes between it and the rest of each prompt. Every row stops on its own (its budget, stop
        strings, end of sequence, its client going away), and its text goes to its own ``on_text`` as it is
        produced. The jobs must share their sampling settings: they are read from the first job's request.
        """
        from transformers import StoppingCriteriaList

        if not jobs:
            return []
        rows = [
            _Row(job, self.tokenizer, self.budget(len(job.prompt_ids), job.max_new_tokens)) for job in jobs
        ]
        device = next(self.model.parameters()).device
        width = max(len(job.prompt_ids) for job in jobs)
        shared = self._shared_prefix_length(jobs)
        cache = self._prefix_cache(jobs[0].prompt_ids[:shared], len(jobs), device) if shared else None
        shared = shared if cache is not None else 0
        ids, mask = [], []
        for job in jobs:
            prompt, padding = job.prompt_ids, width - len(job.prompt_ids)
            if self.is_encoder_decoder:
                ids.append(prompt + [self.pad_id] * padding)
                mask.append([1] * len(prompt) + [0] * padding)
            else:
                # Left padding, after the shared beginning (none when nothing is shared): position ids follow
                # the attention mask, so each row reads its prompt at the positions it has alone.
                ids.append(prompt[:shared] + [self.pad_id] * padding + prompt[shared:])
                mask.append([1] * shared + [0] * padding + [1] * (len(prompt) - shared))
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
            "attention_mask": torch.tensor(mask, dtype=torch.long, device=device),
            "max_new_tokens": max(row.budget for row in rows),
            "pad_token_id": self.pad_id,
            "stopping_criteria": StoppingCriteriaList([_RowsStop(rows, self.eos_ids)]),
        }
        kwargs.update(_sampling_kwargs(jobs[0].request))
        if cache is not None:
            kwargs[self._cache_argument] = cache
        with torch.no_grad():
            self.model.generate(**kwargs)
        return [row.result() for row in rows]

    def _shared_prefix_length(self, jobs: Sequence[GenerationJob]) -> int:
        """How many first tokens every prompt shares (each keeps at least one of its own); 0 when too few
        to be worth a forward pass of their own, or for a single prompt or an encoder-decoder."""
        if len(jobs) < 2 or self.is_encoder_decoder or not self.share_prefixes:
            return 0
        first = jobs[0].prompt_ids
        limit = min(len(job.prompt_ids) for job in jobs) - 1
        length = 0
        while length < limit and all(job.prompt_ids[length] == first[length] for job in jobs):
            length += 1
        return length if length >= MIN_SHARED_PREFIX else 0

    def _prefix_cache(self, prefix: list[int], rows: int, device: torch.device) -> Any:
        """The keys and values of ``prefix``, computed once and repeated for ``rows`` rows; ``None`` (and no
        more sharing) for a model whose cache cannot be built this way."""
        from transformers import DynamicCache

        try:
            try:
                cache = DynamicCache(config=self.model.config)
            except TypeError:  # releases before the cache took the model's config
                cache = DynamicCache()
            input_ids = torch.tensor([prefix], dtype=torch.long, device=device)
            with torch.no_grad():
                self.model(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    use_cache=True,
                    **{self._cache_argument: cache},
                )
            cache.batch_repeat_interleave(rows)
        except Exception as error:  # e.g. a model whose cache is not a DynamicCache
            logger.warning("Prompts are not shared in batches of %s: %s", type(self.model).__name__, error)
            self.share_prefixes = False
            return None
        return cache

    @functools.cached_property
    def _cache_argument(self) -> str:
        # Newer transformers name the key-value cache ``cache``; earlier ones ``past_key_values``.
        parameters = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in parameters else "past_key_values"


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

    def route_many(self, queries: Sequence[Any]) -> list[tuple[Routing, ScopeDecision]]:
        """The routing of each query (a text, or a chat's messages: routed by its last user turn read with
        the turns before it), decided for each on its own (one batched pass of the classifier)."""
        if not self.enabled:
            return [(Routing(BASE_ROUTE), ScopeDecision(in_scope=False)) for _ in queries]
        routed = []
        for query, decision in zip(queries, self.memory.route(list(queries)), strict=True):
            # The routed text is reported only when it is not the last message itself.
            completed = decision.query
            if completed is not None and completed == _last_user_text(query):
                completed = None
            turn = decision.turn if completed is not None else None
            if decision.in_scope:
                routing = Routing(EDIT_ROUTE, decision.edit_id, decision.score, completed, turn)
            else:
                routing = Routing(BASE_ROUTE, None, decision.score, completed, turn)
            routed.append((routing, decision))
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
        (result,) = self.answer_many(
            [decision], [query], [max_new_tokens], [stops], request=request, prompt_tokens=[prompt_tokens]
        )
        return result

    def answer_many(
        self,
        decisions: Sequence[ScopeDecision],
        queries: Sequence[str],
        max_new_tokens: Sequence[int],
        stops: Sequence[Sequence[str]],
        *,
        request: GenerationRequest | None = None,
        prompt_tokens: Sequence[int | None] | None = None,
    ) -> list[GenerationResult]:
        """:meth:`answer` for several queries in one call of the counterfactual model.

        Each query keeps its own budget and stop strings; the sampling settings of ``request`` are shared
        (batch queries that share them).
        """
        count = len(decisions)
        prompt_tokens = [None] * count if prompt_tokens is None else list(prompt_tokens)
        if not (len(queries) == len(max_new_tokens) == len(stops) == len(prompt_tokens) == count):
            raise ValueError(
                "answer_many() needs one query, budget, stop list and prompt length per decision"
            )
        if any(not decision.in_scope or decision.edit is None for decision in decisions):
            raise ValueError("answer() needs an in-scope decision")
        if not count:
            return []
        generation = _sampling_kwargs(request) if request is not None else {}
        # A chat question completed from earlier turns is answered as completed ("she" -> the entity).
        queries = [decision.query or query for decision, query in zip(decisions, queries, strict=True)]
        # One token past the largest budget tells an answer that was cut from one that ended there.
        answers = self.memory.answer(
            list(decisions), list(queries), max_new_tokens=max(max_new_tokens) + 1, **generation
        )
        return [
            self.finish(answer, query, budget, row_stops, counted)
            for answer, query, budget, row_stops, counted in zip(
                answers, queries, max_new_tokens, stops, prompt_tokens, strict=True
            )
        ]

    def finish(
        self, answer: str, query: str, budget: int, stops: Sequence[str], prompt_tokens: int | None
    ) -> GenerationResult:
        """The counterfactual model's ``answer`` (written with one token past ``budget``) as the request gets
        it: cut to ``budget`` tokens (``"length"``), then at its stop strings, counted in the served model's
        tokens."""
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        finish = "stop"
        if len(ids) > budget:
            ids, finish = ids[:budget], "length"
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


def _last_user_text(query: Any) -> str | None:
    """The last user message's text of a chat's messages (``None`` for a plain text query)."""
    if isinstance(query, str):
        return None
    users = [
        message.get("content")
        for message in query
        if isinstance(message, dict) and message.get("role") == "user"
    ]
    return users[-1].strip() if users and isinstance(users[-1], str) else None
