"""What an encoder-decoder edit is, the settings of the rank-one editor, and how a span maps to tokens.

See :mod:`serac.editors.encdec` for the method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from serac.editors.layout import ENCODER_FF_OUTPUT_TEMPLATES
from serac.edits import Edit

__all__ = [
    "LAYER_CHOICES",
    "EncoderDecoderEdit",
    "RankOneEncoderDecoderConfig",
    "as_encdec_edit",
    "find_span_tokens",
    "target_ids",
]

#: The ``layer`` settings other than a block index.
LAYER_CHOICES = ("search", "saliency")

# --------------------------------------------------------------------------------------------------
# The edit


@dataclass(frozen=True)
class EncoderDecoderEdit:
    """One correction of an encoder-decoder model: a negative and a positive example sharing a span.

    Args:
        source: the input the model gets wrong (the negative example's source). It must contain ``span``.
        span: the source text the error hangs on ("yards"); its encoding at the edit layer is the key.
            The first occurrence in the source is used.
        target: the positive (corrected) output, for ``positive_source`` (``source`` when that is unset).
        negative_target: the erroneous output the model produces now. Optional; it is not optimized
            against, but its likelihood before and after the edit is reported in ``last_stats``.
        positive_source: the source of the positive example when it is another sentence than
            ``source``; it must contain ``span`` too. The key is then the mean of the span keys of both
            sources and the value is fitted on ``(positive_source, target)``.

    The shared :class:`~serac.edits.Edit` maps onto this as ``prompt`` = source, ``subject`` = span,
    ``target`` = corrected output (see :meth:`from_edit` / :meth:`to_edit`).

    Example:
        >>> e = EncoderDecoderEdit.from_examples(
        ...     negative=("the road is 5 yards long", "die Strasse ist 5 Meter lang"),
        ...     positive=("the road is 5 yards long", "die Strasse ist 5 Yard lang"),
        ...     span="yards")
        >>> e.to_edit().text
        'the road is 5 yards long die Strasse ist 5 Yard lang'
    """

    source: str
    span: str
    target: str
    negative_target: str | None = None
    positive_source: str | None = None

    def __post_init__(self) -> None:
        for name in ("source", "span", "target", "negative_target", "positive_source"):
            value = getattr(self, name)
            if value is None and name in ("negative_target", "positive_source"):
                continue
            if not isinstance(value, str):
                raise TypeError(f"EncoderDecoderEdit.{name} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise ValueError(f"EncoderDecoderEdit.{name} must not be empty")
        if self.span not in self.source:
            raise ValueError(f"span {self.span!r} does not occur in source {self.source!r}")
        if self.positive_source is not None and self.span not in self.positive_source:
            raise ValueError(f"span {self.span!r} does not occur in positive_source {self.positive_source!r}")

    @classmethod
    def from_examples(
        cls, negative: tuple[str, str], positive: tuple[str, str], span: str
    ) -> EncoderDecoderEdit:
        """Build an edit from a negative ``(source, wrong output)`` and a positive ``(source, right output)``."""
        for name, pair in (("negative", negative), ("positive", positive)):
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise TypeError(f"{name} must be a (source, output) pair, got {pair!r}")
        negative_source, negative_target = negative
        positive_source, positive_target = positive
        return cls(
            source=negative_source,
            span=span,
            target=positive_target,
            negative_target=negative_target,
            positive_source=None if positive_source == negative_source else positive_source,
        )

    @classmethod
    def from_edit(cls, edit: Edit) -> EncoderDecoderEdit:
        """Read a shared :class:`Edit` as ``prompt`` = source, ``subject`` = span, ``target`` = output."""
        if not isinstance(edit, Edit):
            raise TypeError(f"expected an Edit, got {type(edit).__name__}")
        if edit.is_statement:
            raise ValueError(
                "a statement edit has no target output; an encoder-decoder edit needs a prompt and target"
            )
        if edit.subject is None:
            raise ValueError(
                f"the edit {edit.query!r} has no subject: set subject to the source span to edit"
            )
        return cls(source=edit.query, span=edit.subject, target=edit.target)

    def to_edit(self) -> Edit:
        """The shared :class:`Edit` view (``negative_target`` and ``positive_source`` are not kept)."""
        return Edit(prompt=self.source, subject=self.span, target=self.target)

    @property
    def value_source(self) -> str:
        """The source the value is fitted on: the positive example's."""
        return self.positive_source if self.positive_source is not None else self.source

    @property
    def key_sources(self) -> tuple[str, ...]:
        """The sources whose span keys are averaged into ``k*``."""
        return (self.source,) if self.positive_source is None else (self.source, self.positive_source)


def as_encdec_edit(edit: Any) -> EncoderDecoderEdit:
    if isinstance(edit, EncoderDecoderEdit):
        return edit
    if isinstance(edit, Edit):
        return EncoderDecoderEdit.from_edit(edit)
    raise TypeError(f"edits must be Edit or EncoderDecoderEdit objects, got {type(edit).__name__}")


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class RankOneEncoderDecoderConfig:
    """Hyperparameters of :class:`RankOneEncoderDecoderEditor`.

    Args:
        layer: the encoder layer to edit (an int), ``"search"`` (try each candidate layer on the search
            examples and keep the best) or ``"saliency"`` (the most gradient-salient layer, SaLEM).
        candidate_layers: layers ``"search"``/``"saliency"`` choose from; ``None`` = all encoder layers.
        module_template: name template of the encoder feed-forward output projection, e.g.
            ``"encoder.block.{}.layer.1.DenseReluDense.wo"``; overrides ``layout``.
        layout: a key of :data:`ENCODER_FF_OUTPUT_TEMPLATES`; ``None`` = the model's ``config.model_type``.
        edit_dropout: probability of zeroing each entry of the update (0 = plain rank-one update).
        edit_dropout_rescale: divide the kept entries by ``1 - edit_dropout`` (inverted dropout).
        value_steps: gradient steps fitting the value offset.
        value_lr: Adam learning rate of the value offset.
        value_weight_decay: weight of ``||delta||^2 / ||v0||^2`` in the value loss; keeps the offset small.
            A correction often needs ``||delta||`` of two or three times ``||v0||``, so a weight near 1
            would outweigh the target NLL it is traded against and stop the fit short of the target.
        clamp_norm_factor: the offset's norm is clamped to this multiple of the original value's norm.
        value_loss_threshold: stop fitting once the target's mean token NLL falls below this.
        covariance_regularizer: ``C + r * mean(diag C) * I``; keeps ``C`` invertible when some hidden
            units never fire (ReLU) and bounds the update's size along rare directions.
        max_covariance_tokens: at most this many key vectors enter the second moment estimate.
        covariance_batch_size: texts per encoder forward pass when estimating ``C``.
        search_max_new_tokens: generation length for the locality outputs of the layer search.
        seed: seed of the edit-dropout masks (the masks of one ``apply`` are reproducible).
    """

    layer: int | str = "search"
    candidate_layers: tuple[int, ...] | None = None
    module_template: str | None = None
    layout: str | None = None
    edit_dropout: float = 0.0
    edit_dropout_rescale: bool = True
    value_steps: int = 30
    value_lr: float = 0.5
    value_weight_decay: float = 0.1
    clamp_norm_factor: float = 4.0
    value_loss_threshold: float = 5e-2
    covariance_regularizer: float = 1e-2
    max_covariance_tokens: int = 100_000
    covariance_batch_size: int = 32
    search_max_new_tokens: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int | str):
            raise TypeError(f"layer must be an int, 'search' or 'saliency', got {self.layer!r}")
        if isinstance(self.layer, str) and self.layer not in LAYER_CHOICES:
            raise ValueError(f"layer must be an int or one of {LAYER_CHOICES}, got {self.layer!r}")
        if isinstance(self.layer, int) and self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.candidate_layers is not None:
            layers = tuple(self.candidate_layers)
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                raise ValueError(f"candidate_layers must be non-negative ints, got {self.candidate_layers!r}")
            self.candidate_layers = layers
        if self.module_template is not None and (
            not isinstance(self.module_template, str) or self.module_template.count("{}") != 1
        ):
            raise ValueError(f"module_template must hold exactly one '{{}}', got {self.module_template!r}")
        if self.layout is not None and self.layout not in ENCODER_FF_OUTPUT_TEMPLATES:
            raise ValueError(
                f"unknown layout {self.layout!r}; known: {sorted(ENCODER_FF_OUTPUT_TEMPLATES)} "
                "(or pass module_template)"
            )
        if not (isinstance(self.edit_dropout, int | float) and 0.0 <= self.edit_dropout < 1.0):
            raise ValueError(f"edit_dropout must be in [0, 1), got {self.edit_dropout!r}")
        for name in (
            "value_steps",
            "max_covariance_tokens",
            "covariance_batch_size",
            "search_max_new_tokens",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("value_lr", "clamp_norm_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("value_weight_decay", "value_loss_threshold", "covariance_regularizer"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Tokenization helpers


def find_span_tokens(tokenizer: Any, source: str, span: str) -> tuple[list[int], list[int]]:
    """Token ids of ``source`` (with special tokens) and the indices of the tokens covering ``span``.

    The first occurrence of ``span`` is used. Raises ``ValueError`` when the span is empty, absent, or
    covered by no token.
    """
    if not isinstance(span, str) or not span.strip():
        raise ValueError("the span must be a non-empty string")
    start = source.find(span)
    if start < 0:
        raise ValueError(f"span {span!r} does not occur in source {source!r}")
    end = start + len(span)
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(source, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        positions = [
            i
            for i, (a, b) in enumerate(encoding["offset_mapping"])
            if b > a and a < end and b > start  # special tokens have empty offsets
        ]
    else:
        # Without offsets: the span's tokens are those the prefix-with-span adds to the bare prefix,
        # shifted by the special tokens (e.g. <s>) the tokenizer puts in front.
        ids = list(tokenizer(source)["input_ids"])
        special = set(getattr(tokenizer, "all_special_ids", []))
        leading = next((i for i, token in enumerate(ids) if token not in special), len(ids))
        before = len(tokenizer(source[:start], add_special_tokens=False)["input_ids"])
        upto = len(tokenizer(source[:end], add_special_tokens=False)["input_ids"])
        positions = list(range(leading + before, min(leading + upto, len(ids))))
    if not positions:
        raise ValueError(f"span {span!r} of {source!r} maps to no token")
    return ids, positions


def target_ids(tokenizer: Any, target: str) -> list[int]:
    """The decoder's label ids of ``target`` (``text_target``: the tokenizer's target side)."""
    ids = list(tokenizer(text_target=target)["input_ids"])
    if not ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return ids
