"""Reading the query back out of a batch row: what the wrapper routes each row by.

A row of token ids is decoded; a chat-formatted row (the tokenizer's chat template, :mod:`serac.chat`) gives
its last user turn as the query and its whole conversation to route by, any other row its text.
"""

from __future__ import annotations

from typing import Any

import torch

from serac.chat import chat_markers, chat_turns, last_user_turn

__all__ = ["QueryReader", "attended_rows"]


def attended_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    """Each row's token ids without its padding."""
    rows = []
    for row, ids in enumerate(input_ids):
        if attention_mask is not None:
            ids = ids[attention_mask[row].bool()]
        rows.append(ids.tolist())
    return rows


class QueryReader:
    """Decodes rows of one tokenizer into queries; the chat markers are derived once, from its template."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.markers = chat_markers(tokenizer)

    def texts(self, rows: list[list[int]]) -> tuple[list[str], list[bool]]:
        """The query text of each row of token ids, and whether the row is chat-formatted."""
        plain = [text.strip() for text in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]
        if self.markers is None:
            return plain, [False] * len(rows)
        # Rows are parsed one by one: a batch may mix chat-formatted rows with raw prompts.
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=False)
        turns = [last_user_turn(text, *self.markers) for text in texts]
        queries = [
            plain_text if turn is None else turn for plain_text, turn in zip(plain, turns, strict=True)
        ]
        return queries, [turn is not None for turn in turns]

    def routing_inputs(self, rows: list[list[int]], queries: list[str]) -> list[str | list[dict[str, str]]]:
        """What each row is routed by: a chat-formatted row's whole conversation (its last user turn read
        with the turns before it, :mod:`serac.conversation`), any other row's query text."""
        if self.markers is None:
            return list(queries)
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=False)
        inputs: list[str | list[dict[str, str]]] = []
        for text, query in zip(texts, queries, strict=True):
            messages = chat_turns(text, *self.markers)
            inputs.append(query if messages is None else messages)
        return inputs
