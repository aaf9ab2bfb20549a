"""Rank-one editing of encoder-decoder models, with edit-dropout.

Raunak & Menezes (2022, "Rank-One Editing of Encoder-Decoder Models") carry ROME's closed-form
rank-one update over to sequence-to-sequence models such as NMT systems. An erroneous behaviour
("5 yards" translated with *Meter* where *Yard* is wanted) hangs on a token *span* of the source. The
memory edited is the output projection ``W`` of one **encoder** feed-forward block:

* the *key* ``k*`` is the input of that projection at the span (the feed-forward block's hidden
  activation), see :func:`compute_key`;
* the *value* ``v*`` is the projection output at the span that makes the decoder produce the positive
  (corrected) output, found by gradient descent on an additive offset, see :func:`compute_value`;
* the update ``W' = W + Lambda (C^-1 k*)^T`` with ``Lambda = (v* - W k* - b) / ((C^-1 k*)^T k*)``
  inserts the pair while changing the outputs of other keys, distributed with second moment ``C``,
  as little as possible, see :func:`rank_one_update` and :func:`encoder_key_second_moment`;
* *edit-dropout* zeroes each entry of the update independently with probability ``p``, see
  :func:`edit_dropout`. With ``rescale=True`` (the default) the kept entries are divided by ``1 - p``,
  as inverted dropout does, so the expected update is the rank-one update; ``rescale=False`` keeps
  the surviving entries as they are. ``p = 0`` returns the rank-one update unchanged.

The edit layer is chosen, as in the paper, by trying every encoder feed-forward layer on a small set of
examples that contain the span (``layer="search"``), or by gradient saliency (``layer="saliency"``,
:mod:`serac.editors.saliency`), or fixed by the caller (``layer=3``).

Architectures are data: :data:`serac.editors.layout.ENCODER_FF_OUTPUT_TEMPLATES` maps a
``config.model_type`` to the module name template of the encoder feed-forward output projection; any
other model works by passing ``module_template``.

Example:
    >>> editor = RankOneEncoderDecoderEditor(layer=2, edit_dropout=0.1)  # doctest: +SKIP
    >>> edit = EncoderDecoderEdit(source="the road is 5 yards long", span="yards",
    ...                           target="die Strasse ist 5 Yard lang")  # doctest: +SKIP
    >>> model = editor.apply(model, tokenizer, [edit])  # doctest: +SKIP
    >>> editor.restore()  # bit-identical original weights  # doctest: +SKIP
"""

from serac.editors.encdec.editor import RankOneEncoderDecoderEditor
from serac.editors.encdec.edits import EncoderDecoderEdit, RankOneEncoderDecoderConfig, find_span_tokens
from serac.editors.encdec.rank_one import (
    compute_key,
    compute_value,
    count_layers,
    edit_dropout,
    encoder_key_second_moment,
    rank_one_update,
    resolve_module_template,
)
from serac.editors.layout import ENCODER_FF_OUTPUT_TEMPLATES

__all__ = [
    "ENCODER_FF_OUTPUT_TEMPLATES",
    "EncoderDecoderEdit",
    "RankOneEncoderDecoderConfig",
    "RankOneEncoderDecoderEditor",
    "compute_key",
    "compute_value",
    "count_layers",
    "edit_dropout",
    "encoder_key_second_moment",
    "find_span_tokens",
    "rank_one_update",
    "resolve_module_template",
]
