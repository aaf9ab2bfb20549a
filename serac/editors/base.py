"""The weight-editor interface and what every editor shares: weight backup, input checks, tokenization.

An :class:`Editor` turns a list of :class:`~serac.edits.Edit` into an edited model. Weight editors
(ROME, MEMIT, fine-tuning) change the given model in place and remember the original weights of every
tensor they touch, so :meth:`Editor.restore` gives back bit-identical weights. The invariant every
editor keeps: the model is unchanged unless :meth:`Editor.apply` was called, and an ``apply`` that
rejects its input (a ``ValueError``/``TypeError``) has changed nothing.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from serac.edits import Edit

__all__ = [
    "Editor",
    "PreparedPrompt",
    "WeightEditor",
    "check_edits",
    "model_device",
    "pad_batch",
    "prepare_prompt",
    "target_token_ids",
    "token_ids",
]

logger = logging.getLogger(__name__)


class Editor(ABC):
    """An editing method the benchmark compares against.

    Subclasses set ``name`` (the registry name for :func:`serac.editors.get_editor`), ``supports_batch``
    (many edits solved jointly in one :meth:`apply`) and ``supports_sequential`` (:meth:`apply` may be
    called again without :meth:`restore`).
    """

    name: ClassVar[str]
    supports_batch: ClassVar[bool]
    supports_sequential: ClassVar[bool]

    def __init__(self) -> None:
        self.last_stats: dict[str, Any] = {}

    @abstractmethod
    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> Any:
        """Apply ``edits``; return an object with a Hugging Face style ``generate()``."""

    @abstractmethod
    def restore(self) -> None:
        """Undo every :meth:`apply` since the last restore, bit for bit."""


class WeightEditor(Editor):
    """An editor that changes weights in place and keeps the originals of the tensors it touched."""

    def __init__(self) -> None:
        super().__init__()
        self._model: nn.Module | None = None
        self._originals: dict[str, torch.Tensor] = {}

    def _claim_model(self, model: nn.Module) -> None:
        # One editor tracks one model's originals; mixing two models would make restore() lie.
        if self._model is not None and self._model is not model and self._originals:
            raise ValueError(
                "this editor holds edits of another model; call restore() before editing a new one"
            )
        self._model = model

    def _backup(self, model: nn.Module, parameter_names: Sequence[str]) -> None:
        """Remember the current value of each parameter unless an earlier apply already did."""
        parameters = dict(model.named_parameters())
        for name in parameter_names:
            if name not in self._originals:
                self._originals[name] = parameters[name].detach().clone()

    def restore(self) -> None:
        if self._model is None:
            return
        parameters = dict(self._model.named_parameters())
        with torch.no_grad():
            for name, original in self._originals.items():
                parameters[name].copy_(original)
        self._originals.clear()

    @property
    def edited_parameters(self) -> list[str]:
        """Names of the parameters changed since the last :meth:`restore`."""
        return sorted(self._originals)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (editors never assume a device)."""
    return next(model.parameters()).device


def check_edits(edits: Sequence[Edit], *, method: str, require_subject: bool) -> list[Edit]:
    """Validate the edit list an editor received; raise before anything is changed."""
    if isinstance(edits, Edit):
        edits = [edits]
    if isinstance(edits, (str, bytes)) or not isinstance(edits, Sequence):
        raise TypeError(f"{method} expects a sequence of Edit, got {type(edits).__name__}")
    edits = list(edits)
    if not edits:
        raise ValueError(f"{method} got no edits")
    for edit in edits:
        if not isinstance(edit, Edit):
            raise TypeError(f"{method} expects Edit objects, got {type(edit).__name__}")
        if edit.is_statement:
            raise ValueError(
                f"{method} needs prompt edits with a target; statement edits ({edit.statement!r}) are not supported"
            )
        if require_subject and edit.subject is None:
            raise ValueError(f"{method} needs the edit's subject (the prompt {edit.prompt!r} has none)")
    return edits


@dataclass(frozen=True)
class PreparedPrompt:
    """One tokenized prompt: ``input_ids`` and the index of the subject's last token (or ``None``)."""

    input_ids: list[int]
    subject_last: int | None


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """The tokens of ``text`` with the tokenizer's special tokens, as the model reads a prompt."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def subject_end(edit: Edit) -> int:
    """Character offset just after the subject inside ``edit.query``."""
    assert edit.prompt is not None and edit.subject is not None  # callers ran check_edits
    start = edit.prompt.index("{}") if "{}" in edit.prompt else edit.prompt.index(edit.subject)
    return start + len(edit.subject)


def prepare_prompt(tokenizer: Any, edit: Edit, template: str = "{}") -> PreparedPrompt:
    """Tokenize ``template`` filled with the edit's query; locate the subject's last token.

    The subject's last token is the last token of the text cut right after the subject, as in ROME.
    """
    query = edit.query
    text = template.replace("{}", query)
    input_ids = token_ids(tokenizer, text)
    subject_last = None
    if edit.subject is not None:
        prefix_ids = token_ids(tokenizer, template.replace("{}", query[: subject_end(edit)]))
        subject_last = min(len(prefix_ids), len(input_ids)) - 1
    return PreparedPrompt(input_ids, subject_last)


def target_token_ids(tokenizer: Any, query: str, target: str) -> list[int]:
    """The tokens of ``" " + target`` as they continue ``query``.

    Taken from tokenizing the whole text, so sentencepiece and byte-level BPE both give the tokens the
    model really sees after the prompt; falls back to tokenizing the target alone if merges cross the
    boundary.
    """
    prompt_ids = token_ids(tokenizer, query)
    full_ids = token_ids(tokenizer, f"{query} {target}")
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return full_ids[len(prompt_ids) :]
    return list(tokenizer(" " + target, add_special_tokens=False)["input_ids"])


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists into ``(input_ids, attention_mask)``; right padding keeps token positions fixed."""
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        input_ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids.to(device), attention_mask.to(device)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id, else 0 (padding is always masked out)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0
