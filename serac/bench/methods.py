"""The methods a benchmark compares, all behind the :class:`~serac.editors.Editor` interface.

The weight editors come from the :mod:`serac.editors` registry. Two more editors live here because they
are not weight-editing algorithms: :class:`UneditedModel` (the reference every metric is read against) and
:class:`SeracEditor` (SERAC through its public API: edits go to the edit store of an
:class:`~serac.modeling.EditableModel`, the base model's weights are never touched). :class:`Method` is what
the runner holds per method: it applies a setting's edits at once or one after another, undoes them, and
scores target probabilities where the method can.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from serac.bench.config import BASE_METHOD, SERAC_METHOD, BenchmarkConfig, progress
from serac.editors import Editor, get_editor
from serac.edits import Edit
from serac.metrics import rate, target_logprob
from serac.modeling import EditableModel

logger = logging.getLogger(__name__)

__all__ = [
    "Method",
    "SeracEditor",
    "UneditedModel",
    "build_method",
    "load_editable_model",
    "make_editor",
    "sum_stats",
]


class UneditedModel(Editor):
    """The base model as it is: :meth:`apply` changes nothing and returns the model."""

    name: ClassVar[str] = BASE_METHOD
    supports_batch: ClassVar[bool] = True
    supports_sequential: ClassVar[bool] = True

    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> nn.Module:
        return model

    def restore(self) -> None:
        pass


class SeracEditor(Editor):
    """SERAC as an editor: :meth:`apply` stores the edits and returns the :class:`EditableModel`.

    :meth:`restore` empties the edit store; the trained parts stay loaded for the next setting.

    Example:
        >>> editor = SeracEditor(EditableModel.from_defaults())  # doctest: +SKIP
        >>> editor.apply(editor.editable.base_model, editor.editable.tokenizer, edits).generate(...)  # doctest: +SKIP
    """

    name: ClassVar[str] = SERAC_METHOD
    supports_batch: ClassVar[bool] = True
    supports_sequential: ClassVar[bool] = True

    def __init__(self, editable: EditableModel, background: Sequence[Edit] = ()) -> None:
        super().__init__()
        self.editable = editable
        self.background = list(background)
        # Embedded once: every setting starts from an empty store and stores the background again.
        self._background_vectors = (
            editable.store.encode([edit.text for edit in self.background]) if self.background else None
        )

    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> EditableModel:
        if model is not self.editable.base_model:
            raise ValueError("this SERAC editor wraps another base model than the one given")
        if self.background and len(self.editable.store) == 0:
            # Background edits are distinct facts (load_background_edits): nothing for them to supersede.
            self.editable.store.add(self.background, embeddings=self._background_vectors)
        self.editable.edit(list(edits))
        self.last_stats = {"stored_edits": len(self.editable.store), "background_edits": len(self.background)}
        return self.editable

    def routing_rates(
        self, in_scope: Sequence[tuple[str, str, str]], out_of_scope: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        """Scope recall and false-positive rate over every given query, overall and by kind, with counts.

        ``in_scope`` holds (query, key of its edit, kind): a hit is a routing to an edit of that key.
        ``out_of_scope`` holds (query, kind): a false positive is a routing to any edit.
        """
        texts = [text for text, _, _ in in_scope] + [text for text, _ in out_of_scope]
        decisions = self.editable.route(texts) if texts else []
        hits: dict[str, list[bool]] = {}
        false_positives: dict[str, list[bool]] = {}
        for (_, key, kind), decision in zip(in_scope, decisions[: len(in_scope)], strict=True):
            routed = decision.edit.key if decision.in_scope and decision.edit is not None else None
            hits.setdefault(kind, []).append(routed == key)
        for (_, kind), decision in zip(out_of_scope, decisions[len(in_scope) :], strict=True):
            false_positives.setdefault(kind, []).append(decision.in_scope)
        every_hit = [value for values in hits.values() for value in values]
        every_false = [value for values in false_positives.values() for value in values]
        return {
            "scope_recall_all": rate(every_hit).value,
            "scope_recall_all_count": len(every_hit),
            "scope_false_positive_rate_all": rate(every_false).value,
            "scope_false_positive_rate_all_count": len(every_false),
            "scope_false_positives_all": sum(every_false),
            "scope_recall_by_kind": {kind: _rate_and_count(values) for kind, values in sorted(hits.items())},
            "scope_false_positive_rate_by_kind": {
                kind: _rate_and_count(values) for kind, values in sorted(false_positives.items())
            },
        }

    def restore(self) -> None:
        self.editable.store.clear()


def _rate_and_count(values: Sequence[bool]) -> dict[str, Any]:
    return {"rate": rate(values).value, "count": len(values), "positives": sum(values)}


def make_editor(name: str, **hyperparameters: Any) -> Editor:
    """A weight editor from the :mod:`serac.editors` registry."""
    return get_editor(name, **hyperparameters)


def load_editable_model(
    model: Any, tokenizer: Any, serac_path: str | None, *, counterfactual: str | None = None
) -> EditableModel:
    """SERAC around the already loaded base model: parts from ``serac_path`` or the default trained ones;
    ``counterfactual="in-context"`` has the base model answer in-scope queries itself."""
    if serac_path is not None:
        editable = EditableModel.from_pretrained(
            model, serac_path, tokenizer=tokenizer, counterfactual=counterfactual
        )
    else:
        editable = EditableModel.from_defaults(model, tokenizer=tokenizer, counterfactual=counterfactual)
    if len(editable.store):
        logger.info(
            "Starting SERAC from an empty edit store (the saved one holds %d edits)", len(editable.store)
        )
        editable.store.clear()
    return editable


class Method:
    """One compared method: its editor, applied to the base model in batch or sequential mode.

    Weight editors report their statistics under ``editor_stats``; the unedited model and SERAC, which
    change no weights, report theirs (SERAC: ``stored_edits``) as facts of the run itself.
    """

    def __init__(self, name: str, editor: Editor, model: Any, tokenizer: Any) -> None:
        # The name the run was asked for: one editor class may serve under several registry names.
        self.name = name
        self.editor, self.model, self.tokenizer = editor, model, tokenizer
        self.supports_batch = editor.supports_batch
        self.supports_sequential = editor.supports_sequential
        self._reports_stats_as_run_facts = isinstance(editor, (UneditedModel, SeracEditor))

    def apply(self, edits: Sequence[Edit], mode: str, show_progress: bool) -> tuple[Any, dict[str, Any]]:
        """Apply the edits; return an object with ``generate()`` and facts about the application."""
        if self._reports_stats_as_run_facts:
            generator = self.model
            if mode == "batch":
                generator = self.editor.apply(self.model, self.tokenizer, list(edits))
            else:
                for edit in progress(edits, show_progress, f"{self.name}: edits", leave=False):
                    generator = self.editor.apply(self.model, self.tokenizer, [edit])
            return generator, _jsonable(self.editor.last_stats)
        info: dict[str, Any] = {}
        if mode == "batch" and (self.supports_batch or len(edits) == 1):
            generator = self.editor.apply(self.model, self.tokenizer, list(edits))
            info["editor_stats"] = _jsonable(self.editor.last_stats)
            return generator, info
        if mode == "batch":
            # An editor without batch editing (ROME) meets a batch the way its papers do: one edit after
            # another. The run records it.
            info["applied_as"] = "sequential"
        generator = self.model
        stats: list[dict[str, Any]] = []
        for edit in progress(edits, show_progress, f"{self.name}: edits", leave=False):
            generator = self.editor.apply(self.model, self.tokenizer, [edit])
            stats.append(_jsonable(self.editor.last_stats))
        info["editor_stats"] = sum_stats(stats)
        return generator, info

    def reset(self) -> None:
        """Undo every edit applied since the last reset."""
        self.editor.restore()

    def scorer(self, generator: Any) -> Callable[[str, str], float] | None:
        """Mean target log-probability after a prompt through the edited model, if the method exposes it."""
        if isinstance(self.editor, SeracEditor):
            # The public path: the wrapper's forward() routes the prompt and splices in the counterfactual
            # model's logits for a prompt in scope, as any log-likelihood evaluation loop would see them.
            editable = self.editor.editable
            return lambda prompt, target: target_logprob(editable, self.tokenizer, prompt, target)
        # Weight editors return the edited model itself, whose forward pass gives log-probabilities; a
        # wrapper without a forward pass (the cache) has none to give.
        if isinstance(generator, nn.Module) and hasattr(generator, "config"):
            return lambda prompt, target: target_logprob(generator, self.tokenizer, prompt, target)
        return None

    def routed_rows(self, generator: Any) -> list[bool] | None:
        """After a ``generate()`` call, whether each row was routed to an edit (SERAC); ``None`` for others."""
        if isinstance(self.editor, SeracEditor):
            return [decision.in_scope for decision in self.editor.editable.last_routing]
        return None

    def skip_reason(self, num_edits: int, mode: str) -> str | None:
        """Why this method cannot run a setting, or ``None``."""
        if mode == "sequential" and not self.supports_sequential and num_edits > 1:
            return f"{self.name} cannot apply edits one after another without restoring"
        if mode == "batch" and not self.supports_batch and not self.supports_sequential and num_edits > 1:
            return f"{self.name} applies neither several edits at once nor one after another"
        return None


def build_method(
    name: str,
    config: BenchmarkConfig,
    model: Any,
    tokenizer: Any,
    editable_factory: Callable[[Any, Any, str | None], EditableModel],
    background: Sequence[Edit] = (),
) -> Method:
    """The :class:`Method` called ``name``: ``base``, ``serac`` or a registry editor."""
    if name == BASE_METHOD:
        return Method(name, UneditedModel(), model, tokenizer)
    if name == SERAC_METHOD:
        # A factory of three arguments serves when no counterfactual kind is asked for.
        kind = {"counterfactual": config.counterfactual} if config.counterfactual else {}
        editable = editable_factory(model, tokenizer, config.serac_path, **kind)
        if config.device is not None:
            editable.counterfactual_model.model.to(config.device)
        return Method(name, SeracEditor(editable, background), model, tokenizer)
    return Method(name, make_editor(name, **config.editor_hparams.get(name, {})), model, tokenizer)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def sum_stats(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Numbers summed over the editor's calls (seconds add up); anything else from the last call."""
    total: dict[str, Any] = {}
    for entry in stats:
        for key, value in entry.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and isinstance(total.get(key, 0), (int, float))
            ):
                total[key] = total.get(key, 0) + value
            else:
                total[key] = value
    return total
