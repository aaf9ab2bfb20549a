"""EditableModel: a frozen base model wrapped around an :class:`~serac.memory.EditMemory`, as a drop-in model.

The wrapper is a drop-in replacement for the base model: a ``torch.nn.Module`` holding the base model and the
counterfactual model, whose ``generate()`` and ``forward()`` take the base model's arguments. Each row of a
batch is routed on its own: rows in the scope of a stored edit are answered by the counterfactual model,
conditioned on that edit; every other row goes to the base model, unchanged. A call whose edits cannot be
applied raises :class:`EditRoutingError` rather than answering unedited. The base model's weights are never
modified. The edits, the scope classifier, the counterfactual model and their folder belong to the memory
(:attr:`EditableModel.memory`); this module holds only what makes the wrapper a drop-in model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import LogitsProcessorList

from serac.counterfactual import CounterfactualModel
from serac.edits import Edit
from serac.folder import SeracConfig, SeracConfigError
from serac.in_context import InContextCounterfactual, bind_base_model
from serac.memory import EditMemory
from serac.queries import QueryReader, attended_rows
from serac.routing import AnswerForcing, split_by_scope
from serac.scope import ScopeClassifier, ScopeDecision
from serac.store import EditResult, EditStore

logger = logging.getLogger(__name__)

__all__ = ["EditRoutingError", "EditableModel", "SeracConfig", "SeracConfigError"]


class EditRoutingError(RuntimeError):
    """A call has rows in the scope of an edit, but the edits cannot be applied to this kind of call.

    Raised instead of answering with the unedited base model; the message says why and what works instead.
    """


class EditableModel(torch.nn.Module):
    """A base model whose answers can be corrected by edits, without touching its weights.

    A ``torch.nn.Module`` holding the base model and the counterfactual model (as PEFT's ``PeftModel`` holds
    its base model): ``.to()``, ``.half()``, ``.eval()`` return the wrapper and move both models;
    ``parameters()`` and ``state_dict()`` are theirs (edits are saved with :meth:`save_pretrained`); any
    other attribute is the base model's. ``generate()`` and ``forward()`` apply the edits row by row.

    Args:
        base_model: any Hugging Face causal or seq2seq LM; it is used as is and never modified.
        tokenizer: the base model's tokenizer (decodes queries, encodes edited answers).
        memory: the edit side: edit store, scope classifier, counterfactual model
            (:class:`~serac.memory.EditMemory`). Instead of one, its parts may be given as
            ``scope_classifier=``, ``counterfactual_model=`` and ``store=`` (an :class:`~serac.store.EditStore`
            or where it lives; default: a new, empty one in memory).

    Example:
        >>> model = EditableModel.from_defaults()  # doctest: +SKIP
        >>> ids = model.edit([Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")])
        >>> batch = model.tokenizer(["LeBron James plays the sport of"], return_tensors="pt")
        >>> model.tokenizer.decode(model.generate(**batch, max_new_tokens=4)[0], skip_special_tokens=True)
        'LeBron James plays the sport of football.'
    """

    def __init__(
        self,
        base_model: Any,
        tokenizer: Any,
        memory: EditMemory | None = None,
        *,
        scope_classifier: ScopeClassifier | None = None,
        counterfactual_model: CounterfactualModel | InContextCounterfactual | None = None,
        store: EditStore | str | os.PathLike | None = None,
    ) -> None:
        if not hasattr(base_model, "generate") or not hasattr(base_model, "config"):
            raise TypeError(
                f"base_model must be a Hugging Face generative model, got {type(base_model).__name__}"
            )
        if memory is None:
            if scope_classifier is None or counterfactual_model is None:
                raise TypeError(
                    "EditableModel needs an EditMemory, or its scope_classifier= and counterfactual_model="
                )
            memory = EditMemory(scope_classifier, counterfactual_model, store)
        elif not isinstance(memory, EditMemory):
            raise TypeError(f"memory must be an EditMemory, got {type(memory).__name__}")
        elif scope_classifier is not None or counterfactual_model is not None or store is not None:
            raise TypeError("give either memory or its parts (scope_classifier, counterfactual_model, store)")
        super().__init__()
        # Both models are submodules: moving, casting or switching the wrapper to eval mode reaches them.
        self.base_model = base_model
        self.counterfactual_model = bind_base_model(memory.counterfactual_model, base_model, tokenizer)
        self.tokenizer = tokenizer
        self.memory = memory
        self._local = threading.local()
        self._reader = QueryReader(tokenizer)
        _register_for_pipelines()

    @property
    def scope_classifier(self) -> ScopeClassifier:
        """The memory's scope classifier."""
        return self.memory.scope_classifier

    @property
    def store(self) -> EditStore:
        """The memory's edit store."""
        return self.memory.store

    # ------------------------------------------------------------------ edits
    def edit(self, edits: Edit | Sequence[Edit], *, supersede: bool = True) -> EditResult:
        """Store edits; returns their ids, with ``retired`` listing the edits this call superseded (see
        :meth:`EditMemory.edit <serac.memory.EditMemory.edit>`)."""
        return self.memory.edit(edits, supersede=supersede)

    def retired(self) -> list[tuple[int, Edit, int | None]]:
        """The superseded edits kept in the store's history: ``(id, edit, retired_by)`` (see
        :meth:`EditMemory.retired <serac.memory.EditMemory.retired>`)."""
        return self.memory.retired()

    def restore(self, edit_ids: int | Sequence[int]) -> EditResult:
        """Bring retired edits back (see :meth:`EditMemory.restore <serac.memory.EditMemory.restore>`)."""
        return self.memory.restore(edit_ids)

    def remove_edits(self, edit_ids: int | Sequence[int]) -> None:
        """Remove stored edits by id (Python or NumPy integers); an unknown id raises ``KeyError`` and removes
        nothing."""
        self.memory.remove_edits(edit_ids)

    @property
    def edits(self) -> list[tuple[int, Edit]]:
        """The stored ``(id, edit)`` pairs."""
        return self.memory.edits

    @contextlib.contextmanager
    def disable_edits(self) -> Iterator[None]:
        """Within this block (in this thread), ``generate()`` and ``forward()`` are exactly the base model's."""
        depth = getattr(self._local, "disabled", 0)
        self._local.disabled = depth + 1
        try:
            yield
        finally:
            self._local.disabled = depth

    @property
    def edits_enabled(self) -> bool:
        return getattr(self._local, "disabled", 0) == 0

    @property
    def last_routing(self) -> list[ScopeDecision]:
        """Per row of this thread's last ``generate()`` or ``forward()`` call: in scope, which edit, the score.

        Kept per thread, so concurrent callers each read their own call's routing. For the routing of one
        particular call use :meth:`trace_routing`, or the ``routing`` attribute of a
        ``return_dict_in_generate=True`` output.
        """
        return list(getattr(self._local, "routing", []))

    @contextlib.contextmanager
    def trace_routing(self) -> Iterator[list[list[ScopeDecision]]]:
        """Collect the routing of every call made in this block, by this thread, one list per call.

        Example:
            >>> with model.trace_routing() as calls:  # doctest: +SKIP
            ...     model.generate(**batch, max_new_tokens=8)
            >>> calls[0][0].in_scope  # doctest: +SKIP
            True
        """
        calls: list[list[ScopeDecision]] = []
        traces = self._local.__dict__.setdefault("traces", [])
        traces.append(calls)
        try:
            yield calls
        finally:
            traces.remove(calls)

    # ------------------------------------------------------------------ inference
    def route(self, queries: Sequence[str]) -> list[ScopeDecision]:
        """The scope decision for each query text, without generating."""
        if not self.edits_enabled:
            return [ScopeDecision(in_scope=False) for _ in queries]
        return self.memory.route(queries)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Drop-in for ``base_model.generate()``: same arguments, same return type, edits applied per row.

        The whole batch runs through the base model's own ``generate()``. Rows in the scope of an edit are made
        to write the counterfactual model's answer (then the end-of-sequence token) instead of the base model's
        tokens, so lengths (``max_new_tokens``, ``max_length``, a ``GenerationConfig``), stopping criteria,
        streamers, padding and the output format apply to them as to every other row; under sampling
        (``do_sample``, ``temperature``, ``top_k``, ``top_p``), each of a row's ``num_return_sequences`` gets its
        own sampled answer. Out-of-scope rows are exactly what the base model generates for the same batch.
        With ``return_dict_in_generate=True`` the output has a ``routing`` attribute: this call's decisions.
        An edited row's answer is at most the counterfactual model's ``config.max_new_tokens`` long; ``max_time``
        (for the whole call) and ``stopping_criteria`` (given a shared tokenizer) bound its generation too.
        ``inputs_embeds`` are routed when they are the base model's token embeddings; otherwise, with an edit
        stored, the call raises :class:`EditRoutingError`. With the in-context kind (:mod:`serac.in_context`), an
        edited row's answer is the base model's own for the row with the edit in it, with this call's settings.
        """
        started = time.monotonic()
        if inputs is not None and kwargs.get("input_ids") is not None:
            raise ValueError(
                "`inputs` were passed alongside `input_ids`, which is not allowed: pass one of them."
            )
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        input_ids, attention_mask = self._check_inputs(input_ids, kwargs.get("attention_mask"))
        routed_ids = input_ids
        if routed_ids is None and kwargs.get("inputs_embeds") is not None and self._edits_active():
            routed_ids = self._ids_from_embeddings(kwargs["inputs_embeds"], attention_mask)
        if routed_ids is None or not self._edits_active():
            rows = 0 if routed_ids is None else len(routed_ids)
            return self._finish(
                self._base_generate(input_ids, kwargs), [ScopeDecision(in_scope=False)] * rows
            )

        queries, chat_rows = self._queries_and_chat_rows(routed_ids, attention_mask)
        decisions = self.memory.route(
            self._reader.routing_inputs(attended_rows(routed_ids, attention_mask), queries)
        )
        # A chat row is answered for the question it was routed by (completed from earlier turns).
        queries = [decision.query or query for decision, query in zip(decisions, queries, strict=True)]
        route = split_by_scope(decisions)
        if route.all_base:
            return self._finish(self._base_generate(input_ids, kwargs), decisions)
        if kwargs.get("assistant_model") is not None or kwargs.get("prompt_lookup_num_tokens"):
            raise EditRoutingError(
                "assisted generation cannot apply edits (rows in scope: "
                f"{route.edited_rows}); generate without assistant_model/prompt_lookup_num_tokens"
            )
        config = self._generation_config(kwargs)
        if isinstance(self.counterfactual_model, InContextCounterfactual):  # the base model reads the edit
            answers = self.counterfactual_model.answer_rows(
                routed_ids, attention_mask, decisions, config, kwargs
            )
        else:
            answers = self._forced_answers(
                routed_ids, route.edited_rows, queries, chat_rows, decisions, config, kwargs, started
            )
        forcing = AnswerForcing(answers, len(routed_ids), self._pad_token_id(config))
        caller_processors = kwargs.get("logits_processor") or []
        generate_kwargs = {**kwargs, "logits_processor": LogitsProcessorList([*caller_processors, forcing])}
        if config.max_time is not None:  # for the whole call: the base model gets what is left
            generate_kwargs["max_time"] = max(config.max_time - (time.monotonic() - started), 1e-3)
        return self._finish(self._base_generate(input_ids, generate_kwargs), decisions)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The base model's forward pass with the edits applied per row: logits (and loss) of the edited model.

        Rows out of every edit's scope get exactly the base model's logits. In a row in scope, the tokens
        that follow the query are scored by the counterfactual model, teacher-forced on its own input (the
        edit and the query) and aligned to the caller's positions. The query is the row up to its first
        labelled token (``labels`` not ``-100``, the usual convention for scoring an answer), or the whole row
        without ``labels``, whose last position then gives the edited model's next token. For a seq2seq base
        model the query is the encoder input and the decoder tokens are scored. ``loss`` is recomputed from
        the merged logits; cache, hidden states and attentions are ``None`` when a row was edited.

        Raises :class:`EditRoutingError` when a row is in scope but the counterfactual model does not share
        the base model's tokenizer (its logits cannot be aligned), or when edits are stored and a non-empty ``past_key_values`` is given (only the new tokens would be seen).
        """
        inputs_embeds = kwargs.get("inputs_embeds")
        input_ids, attention_mask = self._check_inputs(input_ids, attention_mask)

        def base_forward() -> Any:
            return self.base_model(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
            )

        routed_ids = input_ids
        if routed_ids is None and inputs_embeds is not None and self._edits_active():
            routed_ids = self._ids_from_embeddings(inputs_embeds, attention_mask)
        if routed_ids is None or not self._edits_active():
            self._set_routing(
                [ScopeDecision(in_scope=False)] * (0 if routed_ids is None else len(routed_ids))
            )
            return base_forward()
        past = kwargs.get("past_key_values")
        if past is not None and _cached_length(past) > 0:
            raise EditRoutingError(
                "edits are stored, and forward() with past_key_values sees only the new tokens, so it cannot "
                "tell whether the sequence is in an edit's scope; run the whole sequence without a cache, use "
                "generate(), or call inside disable_edits()"
            )
        routed_ids, attention_mask = self._check_inputs(routed_ids, attention_mask)
        self._check_labels(labels, routed_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(routed_ids)
        splits = self._query_lengths(routed_ids, attention_mask, labels)
        rows = [
            ids[mask.bool()][:split].tolist()
            for ids, mask, split in zip(routed_ids, attention_mask, splits, strict=True)
        ]
        queries, _ = self._query_texts(rows)
        decisions = self.memory.route(self._reader.routing_inputs(rows, queries))
        queries = [decision.query or query for decision, query in zip(decisions, queries, strict=True)]
        self._set_routing(decisions)
        route = split_by_scope(decisions)
        if route.all_base:
            return base_forward()
        if not self._counterfactual_shares_tokenizer():
            raise EditRoutingError(
                f"rows {route.edited_rows} are in the scope of an edit, but forward() cannot apply edits: the "
                "counterfactual model's tokenizer differs from the base model's, so its logits cannot be "
                "aligned to the caller's tokens; use generate(), or a counterfactual model with the base "
                "model's tokenizer"
            )
        return_dict = kwargs.pop("return_dict", None)
        base_kwargs = dict(kwargs)
        if self.is_encoder_decoder and base_kwargs.get("decoder_input_ids") is None and labels is not None:
            base_kwargs["decoder_input_ids"] = self.base_model.prepare_decoder_input_ids_from_labels(
                labels=labels
            )
        output = self.base_model(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **base_kwargs
        )
        logits = output.logits.clone()
        for row in route.edited_rows:
            self._splice_edited_logits(
                logits,
                row,
                routed_ids,
                attention_mask,
                splits[row],
                queries[row],
                decisions[row],
                base_kwargs,
            )
        loss = None if labels is None else self._loss(logits, labels)
        result = type(output)(loss=loss, logits=logits)
        return result.to_tuple() if return_dict is False else result

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike, *, save_parts: bool = True) -> None:
        """Write the SERAC folder: the edit store, the config and (unless ``save_parts=False``) both parts.

        The base model is recorded by name only, never copied. See
        :meth:`EditMemory.save_pretrained <serac.memory.EditMemory.save_pretrained>` for the atomic swap and
        ``save_parts=False``.
        """
        self.memory.save_pretrained(
            directory, save_parts=save_parts, base_model_name_or_path=self._base_model_reference()
        )

    def model_card(self) -> str:
        """A Hugging Face model card for this editor: the base model it edits, the edit count, how to load it."""
        return self.memory.model_card(self._base_model_reference())

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload the SERAC folder (edit store, both parts, config and a model card) to a Hub repository;
        the base model is referenced by name, never uploaded. Keyword arguments as
        :meth:`EditMemory.push_to_hub <serac.memory.EditMemory.push_to_hub>` (``private``, ``token``,
        ``revision``, ``commit_message``, ``create_pr``)."""
        return self.memory.push_to_hub(
            repo_id, base_model_name_or_path=self._base_model_reference(), **kwargs
        )

    @classmethod
    def from_pretrained(
        cls,
        base_model: Any,
        directory: str | os.PathLike,
        *,
        tokenizer: Any = None,
        embedder: Any = None,
        store: str | os.PathLike | None = None,
        allow_external_parts: bool = False,
        revision: str | None = None,
        token: str | None = None,
        counterfactual: str | None = None,
        counterfactual_dtype: str | torch.dtype | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> EditableModel:
        """Wrap ``base_model`` with the SERAC folder saved in ``directory`` (its edits, scope classifier, parts).

        ``directory`` is a local folder or a Hugging Face Hub repository id; ``base_model`` may be a loaded
        model or a name or path to load. ``store``, ``embedder``, ``allow_external_parts``, ``revision`` and
        ``token`` are those of :meth:`EditMemory.from_pretrained <serac.memory.EditMemory.from_pretrained>`:
        a database never written before is filled from the saved edits, one that holds edits already is used
        as it is, and parts are only loaded from inside the folder unless ``allow_external_parts=True``.
        ``counterfactual="in-context"`` answers with ``base_model`` itself reading the edit (:mod:`serac.in_context`);
        ``counterfactual_dtype`` is that of :meth:`EditMemory.from_pretrained`. ``dtype`` is the type a
        ``base_model`` given by name is loaded in (default float32; :func:`serac.offline.load_base_model`); a
        model given loaded keeps its own.
        """
        from serac.offline import DEFAULT_BASE_MODEL, load_base_model, resolve_base_model

        by_name = isinstance(base_model, (str, os.PathLike)) or base_model is None
        if dtype is not None and not by_name:
            raise ValueError(
                "dtype is the type a base model given by name is loaded in; convert a loaded model with .to(dtype)"
            )
        memory = EditMemory.from_pretrained(
            directory,
            embedder=embedder,
            store=store,
            allow_external_parts=allow_external_parts,
            revision=revision,
            token=token,
            counterfactual=counterfactual,
            counterfactual_dtype=counterfactual_dtype,
        )
        if by_name:
            base_model, loaded_tokenizer = load_base_model(base_model, dtype=dtype or torch.float32)
            tokenizer = tokenizer or loaded_tokenizer
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(base_model.name_or_path)
        base_name = getattr(base_model, "name_or_path", None)
        recorded = memory.base_model_name_or_path
        if recorded == DEFAULT_BASE_MODEL and base_name not in (None, DEFAULT_BASE_MODEL):
            # The default base model is recorded by name; once loaded it is named by its cached checkpoint.
            recorded = str(resolve_base_model(recorded))
        if recorded and base_name and base_name != recorded:
            logger.warning(
                "This SERAC folder was saved for base model %s; it now wraps %s",
                memory.base_model_name_or_path,
                base_name,
            )
        return cls(base_model, tokenizer, memory)

    @classmethod
    def from_defaults(
        cls,
        base_model: Any = None,
        *,
        tokenizer: Any = None,
        train_if_missing: bool = True,
        store: str | os.PathLike | None = None,
        counterfactual: str | None = None,
        dtype: str | torch.dtype | None = None,
        counterfactual_dtype: str | torch.dtype | None = None,
    ) -> EditableModel:
        """SmolLM2-135M-Instruct (or ``base_model``) wrapped with the default trained parts, offline.

        The default parts are trained from the embedded synthetic data on first use (a progress bar shows
        it) and cached; later calls load them in seconds. ``store`` (where the edits are kept),
        ``counterfactual`` (``"in-context"``: the base model itself answers), ``dtype`` (the type the base
        model is loaded in when given by name or left to the default) and ``counterfactual_dtype`` are as in
        :meth:`from_pretrained`: ``from_defaults(dtype=torch.bfloat16, counterfactual_dtype=torch.bfloat16)``
        on a GPU.
        """
        # The one upward import of the library: the default parts are trained by serac.training, which
        # itself builds EditableModels, so the recipe is imported here, when called, and not at module
        # level (as PEFT does for its one circular import).
        try:
            from serac.training.recipe import default_parts_dir
        except ImportError as error:
            raise ImportError(
                "EditableModel.from_defaults() trains the default parts on first use and needs the training "
                f"extras: pip install 'serac-memory[train]' ({error})"
            ) from error

        parts = default_parts_dir(train_if_missing=train_if_missing)
        return cls.from_pretrained(
            base_model,
            parts,
            tokenizer=tokenizer,
            store=store,
            counterfactual=counterfactual,
            dtype=dtype,
            counterfactual_dtype=counterfactual_dtype,
        )

    # ------------------------------------------------------------------ forwarding
    def __getattr__(self, name: str) -> Any:
        # Submodules first (torch keeps them out of __dict__), then everything else from the base model
        # (config, device, generation_config, can_generate, ...), as PeftModel does.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or name in ("base_model", "_modules"):
                raise
            base_model = self._modules.get("base_model") if "_modules" in self.__dict__ else None
            if base_model is None:
                base_model = self.__dict__.get("base_model")
            if base_model is None:
                raise
            return getattr(base_model, name)

    def __repr__(self) -> str:
        return (
            f"EditableModel(base_model={type(self.base_model).__name__}, edits={len(self.store)}, "
            f"scope_classifier={type(self.scope_classifier).__name__}, "
            f"counterfactual_model={type(self.counterfactual_model.model).__name__})"
        )

    # ------------------------------------------------------------------ internals
    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.base_model.config, "is_encoder_decoder", False))

    def _edits_active(self) -> bool:
        return self.edits_enabled and len(self.store) > 0

    def _check_inputs(
        self, input_ids: Any, attention_mask: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if input_ids is None:
            return None, attention_mask
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.dtype != torch.long:
            # Any integer dtype holds token ids; embedding layers take int64 (int8, int16 and uint8 they refuse).
            input_ids = input_ids.long()
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
                )
            if attention_mask.dtype.is_floating_point and not torch.all(
                (attention_mask == 0) | (attention_mask == 1)
            ):
                raise ValueError("attention_mask must hold only 0 and 1")
        return input_ids, attention_mask

    def _check_labels(self, labels: Any, input_ids: torch.Tensor) -> None:
        """Labels tell where each row's query ends: one row of them per input row (as long as the row, for a
        decoder-only model)."""
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        width = 1 if self.is_encoder_decoder else 2
        if labels is not None and (labels.dim() != 2 or labels.shape[:width] != input_ids.shape[:width]):
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not fit input_ids of shape {tuple(input_ids.shape)}: "
                "give one row of labels per input row, with -100 where no token is scored"
            )

    def _base_generate(self, input_ids: torch.Tensor | None, kwargs: dict[str, Any]) -> Any:
        if input_ids is None:
            return self.base_model.generate(**kwargs)
        return self.base_model.generate(input_ids=input_ids, **kwargs)

    def _finish(self, output: Any, decisions: Sequence[ScopeDecision]) -> Any:
        """Record this call's routing and attach it to a dict-style output."""
        self._set_routing(decisions)
        if hasattr(output, "sequences"):
            output.routing = list(decisions)
        return output

    def _ids_from_embeddings(self, inputs_embeds: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Token ids whose embeddings are exactly ``inputs_embeds``, to route rows given as embeddings."""
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3:
            raise ValueError("inputs_embeds must be a (batch, length, hidden) tensor")
        embeddings = self.base_model.get_input_embeddings()
        with torch.no_grad():
            vocabulary = torch.arange(embeddings.num_embeddings, device=inputs_embeds.device)
            table = embeddings(vocabulary).to(inputs_embeds.dtype)
            flat = inputs_embeds.reshape(-1, inputs_embeds.shape[-1])
            # Exact distances: the matrix-product shortcut's rounding would hide an exact match.
            distances = torch.cdist(flat.float(), table.float(), compute_mode="donot_use_mm_for_euclid_dist")
            best, ids = distances.min(dim=1)
        ids = ids.reshape(inputs_embeds.shape[:2])
        exact = best.reshape(inputs_embeds.shape[:2]) <= 1e-4 * table.float().norm(dim=1).mean()
        if attention_mask is not None:
            exact |= ~attention_mask.bool()
        if not bool(exact.all()):
            raise EditRoutingError(
                "edits are stored, and these inputs_embeds are not the base model's token embeddings, so their "
                "text cannot be routed to an edit; pass input_ids, or call inside disable_edits()"
            )
        return ids

    def _query_texts(self, rows: list[list[int]]) -> tuple[list[str], list[bool]]:
        """The query text of each row of token ids, and whether the row is chat-formatted."""
        return self._reader.texts(rows)

    def _queries(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[str]:
        """The query text of each row: the last user turn of a chat-formatted row, else the whole row."""
        return self._queries_and_chat_rows(input_ids, attention_mask)[0]

    def _queries_and_chat_rows(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[list[str], list[bool]]:
        """The query text of each row, and whether the row is chat-formatted."""
        return self._query_texts(attended_rows(input_ids, attention_mask))

    def _query_lengths(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None
    ) -> list[int]:
        """Per row, how many attended tokens form the query (in ``forward()``); the rest is the continuation."""
        lengths = []
        for row in range(input_ids.shape[0]):
            attended = attention_mask[row].bool()
            count = int(attended.sum())
            if self.is_encoder_decoder or labels is None:
                lengths.append(count)
                continue
            labelled = (labels[row][attended] != -100).nonzero()
            lengths.append(int(labelled[0]) if len(labelled) else count)
        return lengths

    def _splice_edited_logits(
        self,
        logits: torch.Tensor,
        row: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        split: int,
        query: str,
        decision: ScopeDecision,
        kwargs: dict[str, Any],
    ) -> None:
        """Overwrite the logits of one edited row with the counterfactual model's, aligned to the caller's."""
        if isinstance(self.counterfactual_model, InContextCounterfactual):  # the base model reads the edit
            return self.counterfactual_model.splice(
                logits, row, input_ids, attention_mask, split, decision, kwargs
            )
        if self.is_encoder_decoder:
            decoder_ids = kwargs.get("decoder_input_ids")
            if decoder_ids is None:
                raise EditRoutingError("forward() on a seq2seq base model needs decoder_input_ids or labels")
            continuation = decoder_ids[row, 1:].tolist()
            edited = self.counterfactual_model.continuation_logits(decision.edit, query, continuation)
            positions = torch.arange(decoder_ids.shape[1], device=logits.device)
        else:
            columns = attention_mask[row].bool().nonzero().flatten()
            continuation = input_ids[row, columns[split:]].tolist()
            edited = self.counterfactual_model.continuation_logits(decision.edit, query, continuation)
            # Caller position p-1+k predicts continuation token k; the first one has no position when p == 0.
            first = max(0, 1 - split)
            edited = edited[first:]
            positions = columns[split - 1 + first : split + len(continuation)].to(logits.device)
        width = min(logits.shape[-1], edited.shape[-1])
        block = torch.full(
            (len(positions), logits.shape[-1]), -float("inf"), dtype=logits.dtype, device=logits.device
        )
        block[:, :width] = edited[:, :width].to(logits.dtype)
        logits[row, positions] = block

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        if not self.is_encoder_decoder:
            logits, labels = logits[:, :-1], labels[:, 1:]
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
        )

    def _counterfactual_shares_tokenizer(self) -> bool:
        other = self.counterfactual_model.tokenizer
        if other is self.tokenizer:
            return True
        return other.get_vocab() == self.tokenizer.get_vocab()

    def _generation_config(self, kwargs: dict[str, Any]) -> Any:
        """The generation settings this call runs with, resolved as the base model's ``generate()`` does."""
        generation_config = kwargs.get("generation_config")
        options = {key: value for key, value in kwargs.items() if key != "generation_config"}
        try:
            config, _ = self.base_model._prepare_generation_config(generation_config, **options)
        except (AttributeError, TypeError):  # a transformers without this helper: the caller's settings first
            config = copy.deepcopy(generation_config or self.base_model.generation_config)
            config.update(**options)
        # Argument errors surface here, before the counterfactual model runs, as the base model raises them.
        config.validate()
        return config

    def _forced_answers(
        self,
        input_ids: torch.Tensor,
        rows: list[int],
        queries: Sequence[str],
        chat_rows: Sequence[bool],
        decisions: Sequence[ScopeDecision],
        config: Any,
        kwargs: dict[str, Any],
        started: float,
    ) -> dict[int, list[list[int]]]:
        """For each edited row, the token sequences its generation is made to write (answer, then eos)."""
        if config.max_new_tokens is not None:
            budget = config.max_new_tokens
        else:
            max_length = config.max_length if config.max_length is not None else 20  # generate()'s default
            budget = max_length - (1 if self.is_encoder_decoder else input_ids.shape[1])
        # Answers are written before the base model's first step, where nothing else could stop them: as long
        # as the counterfactual model answers, within the caller's time, and stopped by the caller's criteria.
        budget = min(int(budget), self.counterfactual_model.config.max_new_tokens)
        generation_kwargs: dict[str, Any] = {"max_new_tokens": max(budget, 1)}
        if config.max_time is not None:
            generation_kwargs["max_time"] = max(config.max_time - (time.monotonic() - started), 1e-3)
        criteria = kwargs.get("stopping_criteria")
        if criteria and self._counterfactual_shares_tokenizer():  # they read token ids
            try:  # a copy: a criterion may keep state (where the prompt ended) for the base model's run
                generation_kwargs["stopping_criteria"] = copy.deepcopy(criteria)
            except Exception:  # one holding a lock or an event (a cancel flag) is read, not written
                generation_kwargs["stopping_criteria"] = criteria
        copies = 1
        if config.do_sample:
            copies = int(config.num_return_sequences or 1)
            generation_kwargs.update(
                do_sample=True,
                temperature=config.temperature,
                top_k=config.top_k,
                top_p=config.top_p,
                num_return_sequences=copies,
            )
        edits = [decisions[row].edit for row in rows]
        device = self.counterfactual_model.device
        # The counterfactual model samples from a fork of the random state, so the base model's own draws
        # (and with them every unedited row) are the same as without edits.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            answers = self.counterfactual_model.generate(
                edits, [queries[row] for row in rows], **generation_kwargs
            )
        eos = config.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        texts = self.tokenizer.batch_decode(input_ids[rows].tolist(), skip_special_tokens=True)
        forced: dict[int, list[list[int]]] = {}
        for index, row in enumerate(rows):
            # A raw prompt is continued after a space, as the base model would write it; a chat reply or a
            # seq2seq answer starts fresh.
            space = not (self.is_encoder_decoder or chat_rows[row] or texts[index][-1:].isspace())
            forced[row] = []
            for answer in answers[index * copies : (index + 1) * copies]:
                answer_ids = self.tokenizer((" " if space else "") + answer, add_special_tokens=False)[
                    "input_ids"
                ]
                forced[row].append(answer_ids + ([eos] if eos is not None else []))
        return forced

    def _pad_token_id(self, config: Any) -> int:
        pad = config.pad_token_id
        if pad is None:
            pad = self.tokenizer.pad_token_id
        if pad is None:
            eos = config.eos_token_id
            pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        return int(pad) if pad is not None else 0

    def _set_routing(self, decisions: Sequence[ScopeDecision]) -> None:
        self._local.routing = list(decisions)
        for calls in getattr(self._local, "traces", []):
            calls.append(list(decisions))

    def _base_model_reference(self) -> str | None:
        return getattr(self.base_model, "name_or_path", None) or None


def _cached_length(past_key_values: Any) -> int:
    """How many tokens a cache (a ``Cache`` object or the legacy tuple of tensors) already holds."""
    if hasattr(past_key_values, "get_seq_length"):
        return int(past_key_values.get_seq_length())
    try:
        return int(past_key_values[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


_PIPELINE_REGISTRATION = threading.Lock()
_PIPELINE_MODEL_TYPE = "serac_editable_model"


def _register_for_pipelines() -> None:
    """Let ``transformers.pipeline("text-generation", model=editable)`` accept the wrapper without an error log.

    The text-generation pipeline checks the model's class name against the names of the causal LM classes
    (``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``) and logs an error for any other class; PEFT's wrappers pass
    because transformers lists them. Adding the wrapper's name under its own model type is the same
    entry; it is done on first use rather than at import, and only once.
    """
    global _REGISTERED
    with _PIPELINE_REGISTRATION:
        if _REGISTERED:
            return
        try:
            from transformers.models.auto import modeling_auto
        except ImportError:  # pragma: no cover - transformers is a dependency
            return
        for names in ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"):
            mapping = getattr(modeling_auto, names, None)
            if isinstance(mapping, dict):
                mapping.setdefault(_PIPELINE_MODEL_TYPE, EditableModel.__name__)
        _REGISTERED = True


_REGISTERED = False
