"""Continuous batching: requests join and leave the base model's running batch between decoding steps.

:meth:`BaseModelGenerator.generate_many` answers a batch in one ``generate()`` call: a request that arrives
while it runs waits for the whole call, and a row that has ended stays in the batch, padded, until the last
one ends. A :class:`ContinuousBatch` decodes step by step with its own key-value cache instead: between two
steps new prompts are read (prefilled together, then their keys and values join the running cache, padded
on the left to a common length) and rows that ended leave at once, so their answers go back without
waiting for the others. Position ids follow each row's own tokens, so padding never moves a row: under
greedy decoding each answer is, token for token, the one the row gets alone (in float32; see
docs/serving.md).

It covers decoder-only models whose cache is a plain :class:`~transformers.DynamicCache` (no sliding-window
layers) and the logits processing of temperature, top-k, top-p and min-p sampling and greedy decoding;
:func:`continuous_decoding` says ``None`` otherwise, and the server then batches per ``generate()`` call.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from serac.serve.protocol import GenerationRequest

logger = logging.getLogger(__name__)

__all__ = ["ContinuousBatch", "Decoding", "SharedPrefix", "continuous_decoding"]

#: Logits processors that read only the scores (not the tokens so far): a batch whose rows have different
#: lengths can apply them as ``generate()`` does.
_SCORE_ONLY_PROCESSORS = frozenset(
    {"TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper"}
)


@dataclass(frozen=True)
class Decoding:
    """How the next token is chosen: the logits processors ``generate()`` would apply, then sampling or
    the most likely token."""

    processors: Any
    do_sample: bool

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        if self.processors:  # they read only the scores: no tokens so far to give them
            logits = self.processors(logits.new_empty((logits.shape[0], 0), dtype=torch.long), logits)
        scores = logits
        if self.do_sample:
            return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        return scores.argmax(dim=-1)


def continuous_decoding(model: Any, sampling: dict[str, Any]) -> Decoding | None:
    """The decoding of ``generate(**sampling)`` for a continuous batch, or ``None`` when this model or
    these settings need ``generate()`` itself (an encoder-decoder, a sliding-window cache, beam search,
    a processor that reads the tokens so far such as a repetition penalty)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    try:
        cache = DynamicCache(config=config)
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        generation_config = copy.deepcopy(model.generation_config)
        generation_config.update(**sampling)
        if (generation_config.num_beams or 1) != 1 or (generation_config.num_return_sequences or 1) != 1:
            return None
        with warnings.catch_warnings():  # about processors this refuses below
            warnings.simplefilter("ignore")
            processors = model._get_logits_processor(generation_config=generation_config, device="cpu")
    except Exception as error:  # a model or a transformers release this does not know: generate() then
        logger.info("No continuous batching for %s: %s", type(model).__name__, error)
        return None
    if any(type(processor).__name__ not in _SCORE_ONLY_PROCESSORS for processor in processors):
        return None
    return Decoding(processors, bool(generation_config.do_sample))


class SharedPrefix:
    """The keys and values of the beginning that recent prompts share (a chat template's system prompt),
    kept from batch to batch: a prompt that starts with it reads only the rest of itself.

    The beginning is the longest one the prompts being admitted share with each other and with the prompt
    admitted before them, when it is at least ``minimum`` tokens; its keys and values are computed once
    (one row, no padding) and reused, cut to a shorter shared beginning where needed.
    """

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        self.tokens: list[int] = []
        self.states: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._last: list[int] | None = None

    def lookup(
        self, prompts: Sequence[list[int]], compute: Any
    ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """``(length, states)`` of the beginning ``prompts`` share (each keeps one token of its own), or
        ``(0, [])``; ``compute(tokens)`` gives the states of a beginning not kept yet."""
        others = list(prompts) + ([self._last] if self._last is not None else [])
        self._last = list(prompts[-1])
        if len(others) < 2:
            return 0, []
        first, limit = prompts[0], min(len(prompt) for prompt in prompts) - 1
        length = 0
        while length < limit and all(
            length < len(other) and other[length] == first[length] for other in others
        ):
            length += 1
        if length < self.minimum:
            return 0, []
        if len(self.tokens) < length or self.tokens[:length] != first[:length]:
            self.tokens, self.states = list(first[:length]), compute(first[:length])
        return length, [(keys[:, :, :length], values[:, :, :length]) for keys, values in self.states]


class ContinuousBatch:
    """Rows decoded together, step by step; prompts join between steps and ended rows leave at once.

    Args:
        generator: the server's :class:`~serac.serve.engine.BaseModelGenerator` (model, tokenizer, budgets).
        decoding: from :func:`continuous_decoding`; every row shares it.

    :meth:`admit` and :meth:`step` return the rows that ended, as ``(tag, result)`` pairs with the tag each
    job was admitted with.
    """

    def __init__(self, generator: Any, decoding: Decoding, prefix: SharedPrefix | None = None) -> None:
        self.generator = generator
        self.prefix = prefix
        self.model = generator.model
        self.decoding = decoding
        self.device = next(self.model.parameters()).device
        self._rows: list[Any] = []
        self._tags: list[Any] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, cached positions]: 0 for left padding
        self._pending: torch.Tensor | None = None  # [rows]: each row's last chosen token, not yet read

    def __len__(self) -> int:
        return len(self._rows)

    @classmethod
    def for_request(
        cls, generator: Any, request: GenerationRequest, prefix: SharedPrefix | None = None
    ) -> ContinuousBatch | None:
        """A batch for requests with ``request``'s sampling settings, or ``None`` when ``generate()`` must
        answer them; ``prefix`` keeps the prompts' shared beginning from batch to batch."""
        from serac.serve.engine import _sampling_kwargs

        if generator.is_encoder_decoder:
            return None
        decoding = continuous_decoding(generator.model, _sampling_kwargs(request))
        return None if decoding is None else cls(generator, decoding, prefix)

    def admit(self, jobs: Sequence[Any], tags: Sequence[Any]) -> list[tuple[Any, Any]]:
        """Read the prompts of ``jobs`` (:class:`~serac.serve.engine.GenerationJob`) and choose their first
        tokens; they go on with the running rows at the next :meth:`step`."""
        from transformers import DynamicCache

        from serac.serve.engine import _Row

        if not jobs:
            return []
        generator = self.generator
        rows = [
            _Row(job, generator.tokenizer, generator.budget(len(job.prompt_ids), job.max_new_tokens))
            for job in jobs
        ]
        prompts = [job.prompt_ids for job in jobs]
        shared, states = (0, []) if self.prefix is None else self.prefix.lookup(prompts, self._prefix_states)
        # The shared beginning, then each row's padding, then the rest of its prompt: position ids follow
        # the mask, so each row reads its prompt at the positions it has alone.
        rests = [prompt[shared:] for prompt in prompts]
        width = max(len(rest) for rest in rests)
        ids = [[generator.pad_id] * (width - len(rest)) + rest for rest in rests]
        mask = [[1] * shared + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests]
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)[:, shared:]
        rows_states = [
            (keys.expand(len(jobs), -1, -1, -1), values.expand(len(jobs), -1, -1, -1))
            for keys, values in states
        ]
        cache = DynamicCache(rows_states or None, config=self.model.config)
        logits = self._forward(input_ids, attention_mask, position_ids, cache)
        tokens = self.decoding.choose(logits)
        if self._cache is None:
            self._cache, self._mask, self._pending = cache, attention_mask, tokens
        else:
            self._join(cache, attention_mask, tokens)
        self._rows += rows
        self._tags += list(tags)
        return self._advance(tokens.tolist(), first=len(self._rows) - len(rows))

    def step(self) -> list[tuple[Any, Any]]:
        """One decoding step of every running row."""
        if not self._rows:
            return []
        assert self._mask is not None and self._pending is not None
        ones = torch.ones((len(self._rows), 1), dtype=self._mask.dtype, device=self.device)
        self._mask = torch.cat([self._mask, ones], dim=-1)
        position_ids = self._mask.sum(-1, keepdim=True) - 1
        logits = self._forward(self._pending[:, None], self._mask, position_ids, self._cache)
        self._pending = self.decoding.choose(logits)
        return self._advance(self._pending.tolist(), first=0)

    def fail(self) -> list[Any]:
        """Drop every row (after an error); returns their tags."""
        tags, self._rows, self._tags = self._tags, [], []
        self._cache = self._mask = self._pending = None
        return tags

    # ------------------------------------------------------------------------------------------ internals
    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None,
        cache: Any,
    ) -> torch.Tensor:
        with torch.no_grad():
            output = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{self.generator._cache_argument: cache},
            )
        return output.logits[:, -1, :].to(dtype=torch.float32)

    def _prefix_states(self, tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        input_ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        self._forward(input_ids, torch.ones_like(input_ids), None, cache)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _join(self, cache: Any, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append new rows' cache, padding the shorter side on the left to a common length."""
        assert self._mask is not None and self._pending is not None
        running, new = self._mask.shape[1], mask.shape[1]
        width = max(running, new)
        for layer, added in zip(self._cache.layers, cache.layers, strict=True):
            layer.keys = torch.cat([_pad_left(layer.keys, width), _pad_left(added.keys, width)])
            layer.values = torch.cat([_pad_left(layer.values, width), _pad_left(added.values, width)])
        self._mask = torch.cat([F.pad(self._mask, (width - running, 0)), F.pad(mask, (width - new, 0))])
        self._pending = torch.cat([self._pending, tokens])

    def _advance(self, tokens: list[int], first: int) -> list[tuple[Any, Any]]:
        """Give rows ``first``... their chosen tokens; rows that ended leave the batch."""
        eos_ids = self.generator.eos_ids
        for row, token in zip(self._rows[first:], tokens[-(len(self._rows) - first) :], strict=True):
            row.add_token(token, eos_ids)
        ended = [index for index, row in enumerate(self._rows) if row.done or row.cancelled()]
        if not ended:
            return []
        finished = [(self._tags[index], self._rows[index].result()) for index in ended]
        keep = sorted(set(range(len(self._rows))) - set(ended))
        self._rows = [self._rows[index] for index in keep]
        self._tags = [self._tags[index] for index in keep]
        if not keep:
            self.fail()
            return finished
        assert self._mask is not None and self._pending is not None
        selected = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = self._mask.index_select(0, selected)
        # Positions every remaining row pads are dropped: the cache is as long as the longest row.
        lead = int((mask.sum(0) == 0).long().cumprod(0).sum())
        self._mask = mask[:, lead:]
        self._pending = self._pending.index_select(0, selected)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, selected)[:, :, lead:]
            layer.values = layer.values.index_select(0, selected)[:, :, lead:]
        return finished


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """``states`` ([rows, heads, positions, dim]) with zeros before its positions up to ``width``."""
    missing = width - states.shape[-2]
    return F.pad(states, (0, 0, missing, 0)) if missing else states
