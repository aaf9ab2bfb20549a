"""Continuous batching: requests join and leave the base model's running batch between decoding steps.

:meth:`BaseModelGenerator.generate_many` answers a batch in one ``generate()`` call: a request that arrives
while it runs waits for the whole call, and a row that has ended stays in the batch, padded, until the last
one ends. A :class:`ContinuousBatch` decodes step by step with its own key-value cache instead: between two
steps new prompts are read (prefilled together, after the beginnings a :class:`SharedPrefix` keeps for them,
then their keys and values join the running cache, padded on the left to a common length) and rows that
ended leave at once, so their answers go back without
waiting for the others. Position ids follow each row's own tokens, so padding never moves a row: under
greedy decoding each answer is, token for token, the one the row gets alone (in float32; see
docs/serving.md).

It covers decoder-only models whose cache is a plain :class:`~transformers.DynamicCache` (no sliding-window
layers) and the logits processing of temperature, top-k, top-p and min-p sampling and greedy decoding;
:func:`continuous_decoding` says ``None`` otherwise, and the server then batches per ``generate()`` call.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from serac.counterfactual import copied_token
from serac.serve.protocol import GenerationRequest
from serac.serve.towers import TwoTowers

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


#: A forward pass costs about as much as reading this many more tokens in it (on a small model the weights,
#: read once per pass, dominate: SmolLM2-135M on one CPU core, 62 ms for a pass of one token, 3.7 ms a token).
PASS_TOKENS = 16
#: The most memory the kept beginnings of a server's prompts take (their keys and values): SmolLM2-135M in
#: float32 needs 45 KiB a token, so about 11,000 tokens; a 7B model with 8 key-value heads in half precision
#: (128 KiB a token) about 4,000.
DEFAULT_PREFIX_BYTES = 512 * 2**20


class SharedPrefix:
    """The keys and values of beginnings that recent prompts share (a chat template's system prompt, or an
    edit put before a conversation), kept from batch to batch: a prompt that starts with one of them reads
    only the rest of itself.

    Up to ``capacity`` beginnings, taking at most ``max_bytes``, are kept, the least recently used dropped
    first, so prompts of several shapes (with and without an edit in them) that alternate each keep theirs.
    A prompt reads the longest part of a kept beginning it starts with, when that is at least ``minimum``
    tokens (:meth:`lookup`). After the prompts are read, the longest beginning one of them shares with another
    prompt of its admission or with one of the ``recent`` prompts before it is kept, its keys and values taken
    from that prompt's reading (:meth:`learn`): no pass of its own. Each prompt keeps one token of its own.
    """

    def __init__(
        self, minimum: int, capacity: int = 32, recent: int = 64, max_bytes: int = DEFAULT_PREFIX_BYTES
    ) -> None:
        if capacity < 1 or recent < 1 or max_bytes < 0:
            raise ValueError(
                f"capacity and recent must be >= 1 and max_bytes >= 0, got {capacity!r}, {recent!r}, {max_bytes!r}"
            )
        self.minimum = minimum
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._kept: list[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = []  # oldest first
        self._recent: deque[list[int]] = deque(maxlen=recent)

    @property
    def beginnings(self) -> list[list[int]]:
        """The kept beginnings' tokens, the most recently used last."""
        return [tokens for tokens, _ in self._kept]

    def lookup(
        self, prompts: Sequence[list[int]]
    ) -> list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]]:
        """For each of ``prompts``, ``(length, states)`` of the kept beginning it reads, or ``(0, [])``."""
        found = []
        for prompt in prompts:
            length, position = self._longest(prompt)
            if length < self.minimum:
                found.append((0, []))
                continue
            entry = self._kept.pop(position)
            self._kept.append(entry)  # the most recently used
            found.append(
                (length, [(keys[:, :, :length], values[:, :, :length]) for keys, values in entry[1]])
            )
        return found

    def covers(self, prompt: list[int]) -> bool:
        """Whether a kept beginning holds all of ``prompt`` but its last token (it then needs no reading)."""
        length = self._longest(prompt)[0]
        return length >= self.minimum and length == len(prompt) - 1

    def learn(self, prompts: Sequence[list[int]], states: Any) -> None:
        """Keep the beginnings ``prompts`` (just read) share with each other and with recent prompts, longer
        than any kept one they start with; ``states(index, length)`` gives the keys and values of the first
        ``length`` tokens of prompt ``index``."""
        for index, prompt in enumerate(prompts):
            limit = len(prompt) - 1
            others = [*prompts[:index], *prompts[index + 1 :], *self._recent]
            length = int(_shared_lengths(prompt, others, limit).max(initial=0))
            if length >= self.minimum and length > self._longest(prompt)[0]:
                kept = states(index, length)
                if _size(kept) > self.max_bytes:
                    continue  # alone past the bound: read with its prompt each time
                self._kept.append((list(prompt[:length]), kept))
                while len(self._kept) > self.capacity or self.bytes > self.max_bytes:
                    self._kept.pop(0)
        self._recent.extend(list(prompt) for prompt in prompts)

    @property
    def bytes(self) -> int:
        """The memory the kept beginnings' keys and values take."""
        return sum(_size(states) for _, states in self._kept)

    def _longest(self, prompt: list[int]) -> tuple[int, int]:
        """The most tokens of ``prompt`` (all but its last) a kept beginning holds, and that beginning's place."""
        lengths = _shared_lengths(prompt, self.beginnings, len(prompt) - 1)
        if not len(lengths):
            return 0, -1
        place = len(lengths) - 1 - int(lengths[::-1].argmax())  # of equals, the most recently used
        return int(lengths[place]), place


def _size(states: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(
        keys.numel() * keys.element_size() + values.numel() * values.element_size() for keys, values in states
    )


def _shared_lengths(prompt: Sequence[int], others: Sequence[Sequence[int]], limit: int) -> np.ndarray:
    """For each of ``others``, how many first tokens it shares with ``prompt``, at most ``limit`` (one array
    pass)."""
    width = max(0, min(limit, max((len(other) for other in others), default=0)))
    matrix = np.full((len(others), width), -1, dtype=np.int64)
    for row, other in enumerate(others):
        matrix[row, : min(len(other), width)] = other[:width]
    same = matrix == np.asarray(prompt[:width], dtype=np.int64)
    return np.cumprod(same, axis=1).sum(axis=1)


class ContinuousBatch:
    """Rows decoded together, step by step; prompts join between steps and ended rows leave at once.

    Args:
        generator: the server's :class:`~serac.serve.engine.BaseModelGenerator` (model, tokenizer, budgets).
        decoding: from :func:`continuous_decoding`; every row shares it.

    :meth:`admit` and :meth:`step` return the rows that ended, as ``(tag, result)`` pairs with the tag each
    job was admitted with.
    """

    def __init__(
        self,
        generator: Any,
        decoding: Decoding,
        prefix: SharedPrefix | None = None,
        *,
        towers: TwoTowers | None = None,
        counterfactual_prefix: SharedPrefix | None = None,
    ) -> None:
        self.generator = generator
        self.towers = towers
        # Kept beginnings per side: a counterfactual row's keys and values differ in the top blocks.
        self._prefixes = (prefix, counterfactual_prefix)
        self.model = generator.model
        self.decoding = decoding
        self.device = next(self.model.parameters()).device
        self._rows: list[Any] = []
        self._tags: list[Any] = []
        self._sides: list[bool] = []  # per row: True for a counterfactual row
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, cached positions]: 0 for left padding
        self._pending: torch.Tensor | None = None  # [rows]: each row's last chosen token, not yet read

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def prefix(self) -> SharedPrefix | None:
        """The kept beginnings of the base model's prompts."""
        return self._prefixes[0]

    @classmethod
    def for_request(
        cls,
        generator: Any,
        request: GenerationRequest,
        prefix: SharedPrefix | None = None,
        *,
        towers: TwoTowers | None = None,
        counterfactual_prefix: SharedPrefix | None = None,
    ) -> ContinuousBatch | None:
        """A batch for requests with ``request``'s sampling settings, or ``None`` when ``generate()`` must
        answer them; ``prefix`` keeps the prompts' shared beginning from batch to batch. With ``towers``,
        jobs marked ``counterfactual`` decode on the counterfactual model's top blocks (their kept beginnings
        in ``counterfactual_prefix``)."""
        from serac.serve.engine import _sampling_kwargs

        if generator.is_encoder_decoder:
            return None
        decoding = continuous_decoding(generator.model, _sampling_kwargs(request))
        if decoding is None:
            return None
        return cls(generator, decoding, prefix, towers=towers, counterfactual_prefix=counterfactual_prefix)

    def admit(self, jobs: Sequence[Any], tags: Sequence[Any]) -> list[tuple[Any, Any]]:
        """Read the prompts of ``jobs`` (:class:`~serac.serve.engine.GenerationJob`) and choose their first
        tokens; they go on with the running rows at the next :meth:`step`.

        Prompts are read in one forward pass, or in a few when padding them to one width would read more
        padding than a pass costs (:func:`_reading_groups`): a prompt with nothing kept beside prompts
        that read one token each. A prompt whose kept beginning holds all of it but its last token is read
        in no pass of its own: that token is read by the next :meth:`step`, which chooses its first token."""
        from serac.serve.engine import _Row

        if not jobs:
            return []
        generator = self.generator
        rows = [
            _Row(job, generator.tokenizer, generator.budget(len(job.prompt_ids), job.max_new_tokens))
            for job in jobs
        ]
        prompts = [job.prompt_ids for job in jobs]
        sides = [job.counterfactual is not None for job in jobs]
        if any(sides) and self.towers is None:
            raise ValueError("a counterfactual row needs a batch with the counterfactual model's blocks")
        found: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]] = [(0, [])] * len(prompts)
        for prefix, members in self._by_side(sides):
            for index, kept in zip(members, prefix.lookup([prompts[i] for i in members]), strict=True):
                found[index] = kept
        # A prompt whose kept beginning holds all of it but its last token joins without a pass: that token
        # is read with the running rows' next ones, at the next step.
        kept = [
            index for index, (length, _) in enumerate(found) if length and length == len(prompts[index]) - 1
        ]
        if kept:
            self._enter(
                [prompts[index] for index in kept],
                [found[index] for index in kept],
                [rows[index] for index in kept],
                [tags[index] for index in kept],
            )
        unread = [index for index in range(len(prompts)) if index not in set(kept)]
        finished = []
        for group in _reading_groups([len(prompts[index]) - found[index][0] for index in unread]):
            group = [unread[index] for index in group]
            finished += self._read(
                [prompts[index] for index in group],
                [found[index] for index in group],
                [rows[index] for index in group],
                [tags[index] for index in group],
            )
        return finished

    def ready(self, prompt_ids: list[int], counterfactual: bool = False) -> bool:
        """Whether a prompt joins without a pass of its own (see :meth:`admit`): a kept beginning of its side
        holds all of it but its last token."""
        prefix = self._prefixes[bool(counterfactual)]
        return prefix is not None and prefix.covers(prompt_ids)

    def _by_side(self, sides: Sequence[bool]) -> list[tuple[SharedPrefix, list[int]]]:
        """Each side's kept beginnings with the indices of its rows among ``sides`` (sides without either
        left out)."""
        grouped = []
        for side, prefix in enumerate(self._prefixes):
            members = [index for index, flag in enumerate(sides) if flag == bool(side)]
            if prefix is not None and members:
                grouped.append((prefix, members))
        return grouped

    def _enter(
        self,
        prompts: list[list[int]],
        found: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]],
        rows: list[Any],
        tags: list[Any],
    ) -> None:
        """New rows whose kept beginnings hold all of their prompts but the last tokens: their keys and values
        join the running cache and their last tokens wait to be read by the next step, no pass of their own."""
        from transformers import DynamicCache

        widest = max(length for length, _ in found)
        cache = DynamicCache(_rows_states(found, widest), config=self.model.config)
        mask = torch.tensor(
            [[0] * (widest - length) + [1] * length for length, _ in found],
            dtype=torch.long,
            device=self.device,
        )
        tokens = torch.tensor([prompt[-1] for prompt in prompts], dtype=torch.long, device=self.device)
        sides = [row.job.counterfactual is not None for row in rows]
        for prefix, members in self._by_side(sides):
            # Counted as recent prompts; all they share is kept already.
            prefix.learn([prompts[index] for index in members], _nothing_to_learn)
        if self._cache is None:
            self._cache, self._mask, self._pending = cache, mask, tokens
        else:
            self._join(cache, mask, tokens)
        self._sides += sides
        self._rows += rows
        self._tags += list(tags)

    def _read(
        self,
        prompts: list[list[int]],
        found: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]],
        rows: list[Any],
        tags: list[Any],
    ) -> list[tuple[Any, Any]]:
        """One forward pass over new prompts (each after its kept beginning); their rows join the batch."""
        from transformers import DynamicCache

        # Each row: padding, the kept beginning it starts with, padding, then the rest of its prompt. Position
        # ids follow the mask, so each row reads its prompt at the positions it has alone.
        widest = max(length for length, _ in found)
        rests = [prompt[length:] for prompt, (length, _) in zip(prompts, found, strict=True)]
        width = max(len(rest) for rest in rests)
        ids = [[self.generator.pad_id] * (width - len(rest)) + rest for rest in rests]
        mask = [
            [0] * (widest - length) + [1] * length + [0] * (width - len(rest)) + [1] * len(rest)
            for rest, (length, _) in zip(rests, found, strict=True)
        ]
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)[:, widest:]
        cache = DynamicCache(_rows_states(found, widest) or None, config=self.model.config)
        sides = [row.job.counterfactual is not None for row in rows]
        logits = self._forward(input_ids, attention_mask, position_ids, cache, sides)

        def read(index: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            # Row ``index``'s first ``length`` tokens: its kept beginning, then the start of its rest.
            kept, start = found[index][0], widest + width - len(rests[index])
            spans = (
                (widest - kept, widest - kept + min(length, kept)),
                (start, start + max(0, length - kept)),
            )
            return [
                (_gather(layer.keys, index, spans), _gather(layer.values, index, spans))
                for layer in cache.layers
            ]

        for prefix, members in self._by_side(sides):
            prefix.learn(
                [prompts[index] for index in members],
                lambda index, length, members=members: read(members[index], length),
            )
        tokens = self._choose(logits, rows)
        if self._cache is None:
            self._cache, self._mask, self._pending = cache, attention_mask, tokens
        else:
            self._join(cache, attention_mask, tokens)
        self._sides += sides
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
        logits = self._forward(self._pending[:, None], self._mask, position_ids, self._cache, self._sides)
        self._pending = self._choose(logits, self._rows)
        return self._advance(self._pending.tolist(), first=0)

    def fail(self) -> list[Any]:
        """Drop every row (after an error); returns their tags."""
        tags, self._rows, self._tags, self._sides = self._tags, [], [], []
        self._cache = self._mask = self._pending = None
        return tags

    # ------------------------------------------------------------------------------------------ internals
    def _choose(self, logits: torch.Tensor, rows: Sequence[Any]) -> torch.Tensor:
        """Each row's next token; a counterfactual row that has begun its edit's answer writes its next token."""
        tokens = self.decoding.choose(logits)
        for index, row in enumerate(rows):
            counterfactual = row.job.counterfactual
            if counterfactual is not None and counterfactual.writings:
                token = copied_token(counterfactual.writings, row.generated, counterfactual.after)
                if token is not None:
                    tokens[index] = token
        return tokens

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None,
        cache: Any,
        sides: Sequence[bool],
    ) -> torch.Tensor:
        sides_run = self.towers.rows(sides) if self.towers is not None else contextlib.nullcontext()
        with torch.no_grad(), sides_run:
            output = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{self.generator._cache_argument: cache},
            )
        return output.logits[:, -1, :].to(dtype=torch.float32)

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
        self._sides = [self._sides[index] for index in keep]
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


def _nothing_to_learn(index: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    raise AssertionError("a prompt whose beginning is kept but for its last token has nothing longer to keep")


def _reading_groups(lengths: Sequence[int], pass_tokens: int = PASS_TOKENS) -> list[list[int]]:
    """The prompts to read together, as lists of indices into ``lengths`` (the tokens each prompt has left to
    read): the split that reads the fewest tokens, padding included, counting each pass as ``pass_tokens``.
    Prompts of similar lengths share a pass; one much longer than the rest reads apart from them."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    # cost[j]: the cheapest reading of the j shortest prompts; a group pads to its longest (last) prompt.
    cost, cut = [0] + [0] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        cost[end], cut[end] = min(
            (cost[start] + pass_tokens + (end - start) * lengths[order[end - 1]], start)
            for start in range(end)
        )
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def _rows_states(
    found: Sequence[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]], width: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys and values of each row's kept beginning, padded on the left to ``width`` (rows
    without one: padding only); each beginning is padded once for all its rows. Empty when no row starts with
    a kept beginning."""
    if width == 0:
        return []
    reference = next(states for _, states in found if states)
    nothing = [
        (
            keys.new_zeros((*keys.shape[:2], 0, keys.shape[-1])),
            values.new_zeros((*values.shape[:2], 0, values.shape[-1])),
        )
        for keys, values in reference
    ]
    padded: dict[tuple[int, int] | None, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    rows = []
    for length, states in found:
        key = (states[0][0].data_ptr(), length) if states else None  # the same kept tensors, cut alike
        if key not in padded:
            padded[key] = [
                (_pad_left(keys, width), _pad_left(values, width)) for keys, values in states or nothing
            ]
        rows.append(padded[key])
    return [
        (torch.cat([row[layer][0] for row in rows]), torch.cat([row[layer][1] for row in rows]))
        for layer in range(len(reference))
    ]


def _gather(states: torch.Tensor, row: int, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Row ``row`` of ``states`` ([rows, heads, positions, dim]) at the positions of ``spans``, in order."""
    return torch.cat([states[row : row + 1, :, start:end] for start, end in spans], dim=2)


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """``states`` ([rows, heads, positions, dim]) with zeros before its positions up to ``width``."""
    missing = width - states.shape[-2]
    return F.pad(states, (0, 0, missing, 0)) if missing else states
