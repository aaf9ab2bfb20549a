"""The edit-cache baseline: answer an edit's exact prompt with its target, anything else with the base model.

Lookup is by :attr:`Edit.key` (the normalized prompt), so it shows what pure memorization gets: perfect on
the edit prompts themselves, nothing on paraphrases. No weight is touched.

Example:
    >>> editor = CacheEditor()
    >>> editor.name, editor.supports_batch
    ('cache', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from serac.chat import chat_markers, last_user_turn
from serac.editors.base import Editor, check_edits, target_token_ids
from serac.edits import Edit, normalize_text
from serac.routing import expand_rows, merge_rows, select_rows, split_by_scope
from serac.scope import ScopeDecision

__all__ = ["CacheEditor", "CachedEditsModel"]


def _first_id(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


class CachedEditsModel:
    """A drop-in ``generate()`` over ``base_model`` that answers cached edit prompts with their target.

    Rows whose decoded prompt normalizes to an edit key get ``prompt + target tokens + eos`` (cut to
    ``max_new_tokens``); the other rows go to ``base_model.generate`` with the same arguments. Rows are padded
    on the right with the pad token to one width, as Hugging Face does. Any other attribute is the base
    model's.
    """

    def __init__(self, base_model: nn.Module, tokenizer: Any, entries: dict[str, Edit]) -> None:
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.entries = entries
        self.chat_markers = chat_markers(tokenizer)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this wrapper lacks; guard the ones __init__ sets against recursion.
        if name in ("base_model", "tokenizer", "entries", "chat_markers"):
            raise AttributeError(name)
        return getattr(self.base_model, name)

    def _query(self, ids: torch.Tensor) -> str:
        """The prompt text of a row: the last user turn of a chat-formatted row, else the whole row."""
        if self.chat_markers is not None:
            turn = last_user_turn(self.tokenizer.decode(ids, skip_special_tokens=False), *self.chat_markers)
            if turn is not None:
                return turn
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _eos_id(self) -> int | None:
        generation_config = getattr(self.base_model, "generation_config", None)
        eos = _first_id(getattr(generation_config, "eos_token_id", None))
        return eos if eos is not None else _first_id(self.tokenizer.eos_token_id)

    def _pad_id(self) -> int:
        for value in (
            getattr(getattr(self.base_model, "generation_config", None), "pad_token_id", None),
            self.tokenizer.pad_token_id,
            self._eos_id(),
        ):
            if _first_id(value) is not None:
                return _first_id(value)
        return 0

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Hugging Face ``generate``: ``input_ids``/``attention_mask`` in, sequences out."""
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            raise ValueError("generate() needs input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        is_encoder_decoder = bool(getattr(self.base_model.config, "is_encoder_decoder", False))
        copies = int(kwargs.get("num_return_sequences", 1) or 1)
        max_new = kwargs.get("max_new_tokens")
        if max_new is None and kwargs.get("max_length") is not None:
            max_new = int(kwargs["max_length"]) - (0 if is_encoder_decoder else input_ids.shape[1])

        # An exact-match lookup is the scope decision here; routing.py splits and merges the rows as it
        # does for SERAC.
        batch_size = input_ids.shape[0]
        decisions = []
        for row in range(batch_size):
            edit = self.entries.get(normalize_text(self._query(input_ids[row][attention_mask[row].bool()])))
            decisions.append(ScopeDecision(in_scope=edit is not None, edit=edit))
        route = split_by_scope(decisions)

        parts: list[tuple[list[int], torch.Tensor]] = []
        if route.base_rows:
            rows = select_rows(
                {"input_ids": input_ids, "attention_mask": attention_mask}, route.base_rows, batch_size
            )
            output = self.base_model.generate(**rows, **kwargs)
            sequences = output if isinstance(output, torch.Tensor) else output.sequences
            parts.append((expand_rows(route.base_rows, copies), sequences))
        eos = self._eos_id()
        for row in route.edited_rows:
            edit = decisions[row].edit
            new_tokens = target_token_ids(self.tokenizer, edit.query, edit.target) + (
                [eos] if eos is not None else []
            )
            if max_new is not None:
                new_tokens = new_tokens[: max(int(max_new), 0)]
            if is_encoder_decoder:
                start = _first_id(self.base_model.config.decoder_start_token_id)
                sequence = [start if start is not None else self._pad_id()] + new_tokens
                tokens = torch.tensor(sequence, dtype=input_ids.dtype, device=input_ids.device)
            else:
                tokens = torch.cat(
                    [input_ids[row], torch.tensor(new_tokens, dtype=input_ids.dtype, device=input_ids.device)]
                )
            parts.append((expand_rows([row], copies), tokens[None].expand(copies, -1)))
        result = merge_rows(parts, batch_size * copies, self._pad_id())
        if kwargs.get("return_dict_in_generate"):
            from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput

            output_class = GenerateEncoderDecoderOutput if is_encoder_decoder else GenerateDecoderOnlyOutput
            return output_class(sequences=result)
        return result


class CacheEditor(Editor):
    """Exact-match edit cache; later edits of the same prompt win. :meth:`restore` forgets all edits."""

    name: ClassVar[str] = "cache"
    supports_batch: ClassVar[bool] = True
    supports_sequential: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, Edit] = {}

    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> CachedEditsModel:
        """Remember ``edits``; return a :class:`CachedEditsModel` over ``model`` (weights untouched)."""
        edits = check_edits(edits, method="the edit cache", require_subject=False)
        for edit in edits:
            self.entries[edit.key] = edit
        self.last_stats = {"seconds": 0.0, "stats_seconds": 0.0, "entries": len(self.entries)}
        # The wrapper shares this editor's table, so restore() also resets wrappers handed out earlier.
        return CachedEditsModel(model, tokenizer, self.entries)

    def restore(self) -> None:
        self.entries.clear()
