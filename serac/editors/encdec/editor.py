"""The rank-one encoder-decoder editor: the edit layer's choice, the edits' application and exact restore.

The method is described in :mod:`serac.editors.encdec`; the edit and the settings live in
:mod:`~serac.editors.encdec.edits`, the rank-one math in :mod:`~serac.editors.encdec.rank_one`.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, ClassVar

import torch
from torch import nn

from serac.editors.base import WeightEditor, model_device
from serac.editors.encdec.edits import (
    EncoderDecoderEdit,
    RankOneEncoderDecoderConfig,
    as_encdec_edit,
    find_span_tokens,
    target_ids,
)
from serac.editors.encdec.rank_one import (
    compute_key,
    compute_value,
    count_layers,
    edit_dropout,
    encoder_key_second_moment,
    frozen_eval,
    linear_layer,
    rank_one_update,
    resolve_module_template,
    target_nll,
)
from serac.edits import Edit

__all__ = ["RankOneEncoderDecoderEditor"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Layer search


def _teacher_forced_accuracy(
    model: nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 32
) -> float:
    """Fraction of target tokens the model's argmax reproduces under teacher forcing."""
    device = model_device(model)
    correct = total = 0
    with frozen_eval(model), torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = tokenizer(
                [s for s, _ in chunk], text_target=[t for _, t in chunk], return_tensors="pt", padding=True
            )
            labels = batch["labels"].to(device)
            mask = batch.get("attention_mask")
            pad = getattr(tokenizer, "pad_token_id", None)
            label_mask = labels != pad if pad is not None else torch.ones_like(labels, dtype=torch.bool)
            labels = labels.masked_fill(~label_mask, -100)
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=None if mask is None else mask.to(device),
                labels=labels,
            ).logits
            correct += int(((logits.argmax(-1) == labels) & label_mask).sum())
            total += int(label_mask.sum())
    return correct / max(total, 1)


def _greedy_outputs(
    model: nn.Module, tokenizer: Any, sources: Sequence[str], max_new_tokens: int
) -> list[str]:
    device = model_device(model)
    outputs = []
    with frozen_eval(model), torch.no_grad():
        for start in range(0, len(sources), 32):
            batch = tokenizer(list(sources[start : start + 32]), return_tensors="pt", padding=True).to(device)
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            outputs.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
    return outputs


# --------------------------------------------------------------------------------------------------
# The editor


class RankOneEncoderDecoderEditor(WeightEditor):
    """Rank-one editing of an encoder feed-forward layer, with edit-dropout (Raunak & Menezes, 2022).

    Args:
        config: a :class:`RankOneEncoderDecoderConfig`; keyword overrides of its fields are also accepted.
        covariance_texts: source texts whose keys estimate ``C``; ``None`` uses ``C = I`` (minimum-norm
            update, which spreads more onto unrelated inputs than a ``C`` from in-domain text).
        search_examples: ``(source, corrected output)`` pairs containing the span that ``layer="search"``
            scores each layer on (efficacy); the edits themselves when ``None``.
        locality_sources: sources without the span whose pre-edit greedy outputs the search wants kept;
            the first 16 ``covariance_texts`` when ``None``.

    Edits are :class:`EncoderDecoderEdit` objects or shared :class:`~serac.edits.Edit` objects with
    ``prompt`` = source, ``subject`` = span and ``target`` = corrected output. Several edits in one
    :meth:`apply` are inserted one after another, each a rank-one update computed on the model as the
    previous ones left it; :meth:`apply` may be called again without :meth:`restore`. Weights change
    only after every edit has been validated; an error during the update restores the layer.

    Example:
        >>> editor = RankOneEncoderDecoderEditor(layer="search", edit_dropout=0.1,
        ...                                      covariance_texts=train_sources)  # doctest: +SKIP
        >>> model = editor.apply(model, tokenizer, [Edit(prompt="5 {} long", subject="yards",
        ...                                              target="5 Yard lang")])  # doctest: +SKIP
        >>> editor.last_stats["layer"], editor.restore()  # doctest: +SKIP
    """

    name: ClassVar[str] = "encdec_rank_one"
    # Edits given together are inserted one after another, not solved jointly (as ROME, unlike MEMIT).
    supports_batch: ClassVar[bool] = False
    supports_sequential: ClassVar[bool] = True

    def __init__(
        self,
        config: RankOneEncoderDecoderConfig | None = None,
        *,
        covariance_texts: Sequence[str] | None = None,
        search_examples: Sequence[tuple[str, str]] | None = None,
        locality_sources: Sequence[str] | None = None,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = RankOneEncoderDecoderConfig()
        if not isinstance(config, RankOneEncoderDecoderConfig):
            raise TypeError(f"config must be a RankOneEncoderDecoderConfig, got {type(config).__name__}")
        if overrides:
            known = {f.name for f in fields(RankOneEncoderDecoderConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"unknown hyperparameters for {self.name}: {unknown}; known: {sorted(known)}")
            config = RankOneEncoderDecoderConfig(**{**config.to_dict(), **overrides})
        super().__init__()
        self.config = config
        self.covariance_texts = _check_texts("covariance_texts", covariance_texts)
        self.search_examples = _check_pairs(search_examples)
        self.locality_sources = _check_texts("locality_sources", locality_sources)
        self._second_moments: dict[tuple[str, int], torch.Tensor] = {}
        self._second_moments_model: weakref.ref[nn.Module] | None = None

    # -- public API --------------------------------------------------------------------------------

    def apply(
        self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit | EncoderDecoderEdit]
    ) -> nn.Module:
        """Insert ``edits`` into ``model`` in place and return it; :meth:`restore` undoes every apply."""
        started = time.perf_counter()
        encdec_edits, template, layers = self._validate(model, tokenizer, edits)
        stats: dict[str, Any] = {"edits": len(encdec_edits), "module_template": template}
        stats_seconds = 0.0

        config = self.config
        if isinstance(config.layer, int):
            layer = config.layer
        elif config.layer == "saliency":
            from serac.editors.saliency import layer_saliency

            # The loss whose gradients rank the layers is the one the value is fitted on: the positive
            # example's source and corrected output.
            positives = [Edit(prompt=e.value_source, target=e.target) for e in encdec_edits]
            profile = layer_saliency(model, tokenizer, positives, template)
            layer = max(layers, key=lambda i: profile[i])  # ties: the lower layer
            stats["saliency"] = profile
        else:
            layer, stats["layer_search"], stats_seconds = self._search(
                model, tokenizer, encdec_edits, template, layers
            )
        stats["layer"] = layer

        module = linear_layer(model, template, layer)
        t0 = time.perf_counter()
        second_moment = self._second_moment(model, tokenizer, template, layer)
        stats_seconds += time.perf_counter() - t0
        self._backup(model, [f"{template.format(layer)}.weight"])
        snapshot = module.weight.detach().clone()
        try:
            stats["per_edit"] = self._insert(model, tokenizer, encdec_edits, template, layer, second_moment)
        except BaseException:
            with torch.no_grad():
                module.weight.copy_(snapshot)
            raise
        stats["seconds"] = time.perf_counter() - started
        stats["stats_seconds"] = stats_seconds
        self.last_stats = stats
        logger.info(
            "inserted %d edit(s) at %s in %.2fs", len(encdec_edits), template.format(layer), stats["seconds"]
        )
        return model

    # -- internals ---------------------------------------------------------------------------------

    def _validate(
        self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit | EncoderDecoderEdit]
    ) -> tuple[list[EncoderDecoderEdit], str, list[int]]:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise ValueError(
                f"{self.name} edits encoder-decoder models; this model's config is not is_encoder_decoder"
            )
        if not callable(tokenizer):
            raise TypeError("tokenizer must be a callable Hugging Face tokenizer")
        if isinstance(edits, Edit | EncoderDecoderEdit | str) or not isinstance(edits, Sequence):
            raise TypeError("edits must be a sequence of Edit or EncoderDecoderEdit objects")
        if not edits:
            raise ValueError("edits must not be empty")
        encdec_edits = [as_encdec_edit(e) for e in edits]
        template = resolve_module_template(model, self.config.module_template, self.config.layout)
        num_layers = count_layers(model, template)
        if num_layers == 0:
            raise ValueError(f"model has no module {template.format(0)!r}; wrong layout or module_template?")
        requested = [self.config.layer] if isinstance(self.config.layer, int) else []
        requested += list(self.config.candidate_layers or [])
        for layer in requested:
            if layer >= num_layers:
                raise ValueError(f"layer {layer} is out of range: the model has {num_layers} encoder layers")
        linear_layer(model, template, 0)
        for edit in encdec_edits:
            for source in (*edit.key_sources, edit.value_source):
                find_span_tokens(tokenizer, source, edit.span)
            target_ids(tokenizer, edit.target)
        layers = list(self.config.candidate_layers or range(num_layers))
        self._claim_model(model)  # the last check: refuses a second model while edits of one are held
        return encdec_edits, template, layers

    def _second_moment(
        self, model: nn.Module, tokenizer: Any, template: str, layer: int
    ) -> torch.Tensor | None:
        if self.covariance_texts is None:
            return None
        # One C per model and layer, from the model as this editor first sees it (as ROME's statistics
        # describe the unedited model); a new model starts a new cache.
        cached_for = self._second_moments_model() if self._second_moments_model is not None else None
        if cached_for is not model:
            self._second_moments.clear()
            self._second_moments_model = weakref.ref(model)
        key = (template, layer)
        if key not in self._second_moments:
            self._second_moments[key] = encoder_key_second_moment(
                model,
                tokenizer,
                template,
                layer,
                self.covariance_texts,
                batch_size=self.config.covariance_batch_size,
                max_tokens=self.config.max_covariance_tokens,
            )
        return self._second_moments[key]

    def _insert(
        self,
        model: nn.Module,
        tokenizer: Any,
        edits: Sequence[EncoderDecoderEdit],
        template: str,
        layer: int,
        second_moment: torch.Tensor | None,
    ) -> list[dict[str, Any]]:
        module = linear_layer(model, template, layer)
        device = module.weight.device
        generator = torch.Generator(device=device).manual_seed(self.config.seed)
        per_edit = []
        for edit in edits:
            negative_before = (
                None
                if edit.negative_target is None
                else _pair_nll(model, tokenizer, edit.source, edit.negative_target)
            )
            key = compute_key(model, tokenizer, template, layer, edit.key_sources, edit.span)
            value, value_stats = compute_value(
                model, tokenizer, template, layer, edit.value_source, edit.span, edit.target, self.config
            )
            update = rank_one_update(
                module.weight,
                module.bias if isinstance(getattr(module, "bias", None), torch.Tensor) else None,
                key,
                value,
                second_moment,
                regularizer=self.config.covariance_regularizer,
            )
            update = edit_dropout(
                update,
                self.config.edit_dropout,
                rescale=self.config.edit_dropout_rescale,
                generator=generator,
            )
            with torch.no_grad():
                module.weight.add_(update)
            record: dict[str, Any] = {
                "span": edit.span,
                **value_stats,
                "update_norm": float(update.float().norm()),
            }
            if edit.negative_target is not None:
                record["negative_target_nll_before"] = negative_before
                record["negative_target_nll_after"] = _pair_nll(
                    model, tokenizer, edit.source, edit.negative_target
                )
            per_edit.append(record)
        return per_edit

    def _search(
        self,
        model: nn.Module,
        tokenizer: Any,
        edits: Sequence[EncoderDecoderEdit],
        template: str,
        layers: list[int],
    ) -> tuple[int, list[dict[str, float]], float]:
        """Try each layer: insert, score efficacy and locality, undo; the best layer wins."""
        examples = list(self.search_examples or [(e.value_source, e.target) for e in edits])
        locality_sources = self.locality_sources
        if locality_sources is None and self.covariance_texts is not None:
            locality_sources = self.covariance_texts[:16]
        locality_pairs: list[tuple[str, str]] = []
        if locality_sources:
            outputs = _greedy_outputs(model, tokenizer, locality_sources, self.config.search_max_new_tokens)
            locality_pairs = [(s, o) for s, o in zip(locality_sources, outputs, strict=True) if o.strip()]
        results = []
        stats_seconds = 0.0
        for layer in layers:
            module = linear_layer(model, template, layer)
            t0 = time.perf_counter()
            second_moment = self._second_moment(model, tokenizer, template, layer)
            stats_seconds += time.perf_counter() - t0
            snapshot = module.weight.detach().clone()
            try:
                self._insert(model, tokenizer, edits, template, layer, second_moment)
                efficacy = _teacher_forced_accuracy(model, tokenizer, examples)
                locality = (
                    _teacher_forced_accuracy(model, tokenizer, locality_pairs) if locality_pairs else 1.0
                )
            finally:
                with torch.no_grad():
                    module.weight.copy_(snapshot)
            results.append(
                {"layer": layer, "efficacy": efficacy, "locality": locality, "score": efficacy + locality}
            )
            logger.debug("layer %d: efficacy %.3f locality %.3f", layer, efficacy, locality)
        best = max(results, key=lambda r: (r["score"], r["efficacy"], -r["layer"]))
        return int(best["layer"]), results, stats_seconds


def _pair_nll(model: nn.Module, tokenizer: Any, source: str, target: str) -> float:
    device = model_device(model)
    input_ids = torch.tensor([tokenizer(source)["input_ids"]], device=device)
    labels = torch.tensor([target_ids(tokenizer, target)], device=device)
    with frozen_eval(model), torch.no_grad():
        return float(target_nll(model, input_ids, labels))


def _check_texts(name: str, texts: Sequence[str] | None) -> list[str] | None:
    if texts is None:
        return None
    if isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise TypeError(f"{name} must be a sequence of non-empty strings")
    if not texts:
        raise ValueError(f"{name} must not be empty (pass None instead)")
    return list(texts)


def _check_pairs(pairs: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    if pairs is None:
        return None
    checked = []
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise TypeError(f"search_examples must be (source, output) string pairs, got {pair!r}")
        checked.append((pair[0], pair[1]))
    if not checked:
        raise ValueError("search_examples must not be empty (pass None instead)")
    return checked
