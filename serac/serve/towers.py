"""A counterfactual model that decodes its rows inside the base model's batch.

A causal counterfactual model fine-tuned from the base model in its top decoder blocks only (the default
recipe trains the last 8 of SmolLM2's 30) holds the base model's embeddings, lower blocks and output layer,
tensor for tensor. Its rows then need no model call of their own: in one forward pass every row goes through
the shared lower blocks, and at each of the top blocks the base model's rows go through the base model's
block and the counterfactual rows through the counterfactual model's. On a CPU, where a pass costs about as
much for one row as for many (the weights are read once per pass), an edit-route answer then costs the top
blocks' share of a pass instead of a whole second model decoding beside the batch.

:func:`shared_depth` finds how many lower blocks two models share; :class:`TwoTowers` runs a forward pass of
the base model with the counterfactual model's top blocks on the rows it is given. Rows keep one key-value
cache: at a top block each side's keys and values go to its own rows.

A counterfactual model trained with low-rank updates of its top blocks' weights
(``CounterfactualTrainingArguments.low_rank``) differs from the base model in those blocks by a matrix of
small rank per linear layer (and in their norms' gains). Its rows then go through the base model's top blocks
too, each linear layer adding the update's two thin products on the counterfactual rows alone: the top
blocks' weights are read once per pass for every row, as the lower blocks' are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["MAX_LOW_RANK", "TwoTowers", "low_rank_update", "shared_depth"]

#: The largest rank of a linear layer's update that :class:`TwoTowers` applies as two thin products (and at
#: most a quarter of the layer's smaller side, where they are much cheaper than the layer); a layer whose
#: update has a higher rank (a top block fine-tuned whole) makes it run the counterfactual model's blocks on
#: their rows instead.
MAX_LOW_RANK = 64


def _blocks(model: Any) -> torch.nn.ModuleList | None:
    """The decoder blocks of a Hugging Face causal LM (``model.model.layers`` for Llama, Qwen, Gemma...)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    blocks = getattr(decoder, "layers", None)
    return blocks if isinstance(blocks, torch.nn.ModuleList) and len(blocks) else None


def shared_depth(base: Any, counterfactual: Any) -> int | None:
    """How many lower decoder blocks ``counterfactual`` shares with ``base``, when that is all they share:
    the same architecture, every tensor outside the top blocks equal (in the counterfactual model's dtype),
    and the blocks above the depth differing. ``None`` when they share no block or differ elsewhere (an
    encoder-decoder, another architecture, a fully fine-tuned model, another vocabulary)."""
    if type(base) is not type(counterfactual) or getattr(base.config, "is_encoder_decoder", False):
        return None
    base_blocks, blocks = _blocks(base), _blocks(counterfactual)
    if base_blocks is None or blocks is None or len(base_blocks) != len(blocks):
        return None
    prefix = _blocks_prefix(base, base_blocks)
    if prefix is None:
        return None
    theirs = dict(counterfactual.state_dict())
    ours = dict(base.state_dict())
    if set(theirs) != set(ours):
        return None
    lowest = len(blocks)
    for name, tensor in ours.items():
        other = theirs[name]
        if tensor.shape != other.shape:
            return None
        if torch.equal(tensor.to(other.dtype), other):
            continue
        if not name.startswith(prefix):
            return None  # an embedding, a norm or the output layer of its own
        lowest = min(lowest, int(name[len(prefix) :].split(".", 1)[0]))
    return lowest or None


def _blocks_prefix(model: Any, blocks: torch.nn.ModuleList) -> str | None:
    """The state-dict prefix of the model's decoder blocks (``"model.layers."``)."""
    for name, module in model.named_modules():
        if module is blocks:
            return f"{name}."
    return None


def low_rank_update(
    base: torch.Tensor, tuned: torch.Tensor, max_rank: int = MAX_LOW_RANK
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(down, up)`` with ``tuned - base == up @ down`` (to the float rounding of ``tuned``) and at most
    ``max_rank`` rows in ``down`` (and at most a quarter of the weight's smaller side), or ``None`` when the
    update of this weight has a higher rank.

    Example:
        >>> base = torch.zeros(8, 4)
        >>> down, up = low_rank_update(base, base + torch.outer(torch.ones(8), torch.arange(4.0)))
        >>> down.shape, up.shape
        (torch.Size([1, 4]), torch.Size([8, 1]))
    """
    delta = tuned.detach().float() - base.detach().float()
    left, values, right = torch.linalg.svd(delta, full_matrices=False)
    if not values.numel() or not bool(values[0] > 0):
        return None
    # Singular values of the rounding of a merged update are about a millionth of its largest: far below this.
    rank = int((values > values[0] * 1e-4).sum())
    if rank > min(max_rank, min(delta.shape) // 4):
        return None
    return (values[:rank, None] * right[:rank]).to(base.dtype), left[:, :rank].to(base.dtype).contiguous()


def _low_rank_plan(
    base_blocks: Sequence[torch.nn.Module], blocks: Sequence[torch.nn.Module]
) -> list[tuple[torch.nn.Module, str, torch.nn.Module, Any]] | None:
    """For each module of the base model's ``base_blocks`` that differs in the counterfactual model's
    ``blocks``: ``(parent, name, module, change)``, the change a ``(down, up)`` update of a linear layer
    without a bias of its own, or the counterfactual model's module where only vectors differ (a norm's gain);
    ``None`` when another kind of difference (a higher-rank update, another dtype) makes the plan fail."""
    plan = []
    for base_block, block in zip(base_blocks, blocks, strict=True):
        modules = dict(block.named_modules())
        for name, module in base_block.named_modules():
            theirs = modules.get(name)
            own = dict(module.named_parameters(recurse=False))
            other = dict(theirs.named_parameters(recurse=False)) if theirs is not None else {}
            if set(own) != set(other) or any(o.dtype != other[k].dtype for k, o in own.items()):
                return None
            changed = [key for key, tensor in own.items() if not torch.equal(tensor, other[key])]
            if not changed:
                continue
            parent_name, _, attribute = name.rpartition(".")
            parent = base_block.get_submodule(parent_name)
            if isinstance(module, torch.nn.Linear) and changed == ["weight"]:
                update = low_rank_update(module.weight, theirs.weight)
                if update is None:
                    return None
                plan.append((parent, attribute, module, update))
            elif all(own[key].dim() == 1 for key in changed) and not list(module.children()):
                plan.append((parent, attribute, module, theirs))
            else:
                return None
    return plan


class TwoTowers:
    """The base model's forward pass with the counterfactual model's top blocks on some of its rows.

    Args:
        base: the base model (its blocks are swapped in place only for the duration of :meth:`rows`).
        counterfactual: a model from which :func:`shared_depth` found ``depth`` shared blocks.
        depth: the number of lower blocks both models share.

    ``low_rank`` says whether the counterfactual rows take the base model's top blocks with the low-rank
    updates of the counterfactual model's (see the module's docstring) rather than its blocks.
    """

    def __init__(self, base: Any, counterfactual: Any, depth: int) -> None:
        base_blocks, blocks = _blocks(base), _blocks(counterfactual)
        if base_blocks is None or blocks is None or not 0 < depth <= len(blocks):
            raise ValueError(f"no {depth} shared blocks between these models")
        self.base = base
        self.depth = depth
        self._blocks = base_blocks
        self._own = list(base_blocks)
        self._split: tuple[torch.Tensor, torch.Tensor] | None = None
        plan = _low_rank_plan(self._own[depth:], list(blocks)[depth:])
        # Low-rank updates swap modules inside the base model's top blocks; otherwise whole blocks are swapped.
        self._swaps = (
            None
            if plan is None
            else [
                (parent, name, module, _Updated(module, change, self))
                for parent, name, module, change in plan
            ]
        )
        self._pairs = (
            []
            if plan is not None
            else [
                _TwoBlocks(block, other, self)
                for block, other in zip(self._own[depth:], list(blocks)[depth:], strict=True)
            ]
        )

    @property
    def low_rank(self) -> bool:
        return self._swaps is not None

    @contextlib.contextmanager
    def rows(self, counterfactual: Sequence[bool]) -> Iterator[None]:
        """Within the block, forward passes of the base model take the counterfactual model's top blocks
        on the rows flagged in ``counterfactual`` (one flag per row of the batch). Without a flagged row
        the base model runs as it is."""
        flags = torch.tensor(list(counterfactual), dtype=torch.bool)
        if not bool(flags.any()):
            yield
            return
        device = next(self.base.parameters()).device
        self._split = (
            (~flags).nonzero().squeeze(1).to(device),
            flags.nonzero().squeeze(1).to(device),
        )
        for parent, name, _, updated in self._swaps or ():
            setattr(parent, name, updated)
        for index, pair in enumerate(self._pairs, start=self.depth):
            self._blocks[index] = pair
        try:
            yield
        finally:
            for parent, name, module, _ in self._swaps or ():
                setattr(parent, name, module)
            for index in range(self.depth, self.depth + len(self._pairs)):
                self._blocks[index] = self._own[index]
            self._split = None


class _Updated(torch.nn.Module):
    """A module of a base model's top block with the counterfactual model's change on the flagged rows: a
    linear layer adds ``x @ down.T @ up.T`` on them; another module (a norm) is the counterfactual model's
    there."""

    def __init__(self, module: torch.nn.Module, change: Any, towers: TwoTowers) -> None:
        super().__init__()
        # Not registered as submodules: this wrapper lives only for a forward pass.
        self.__dict__["module"] = module
        self.__dict__["change"] = change
        self.__dict__["towers"] = towers

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        split = self.towers._split
        assert split is not None
        rows = split[1]
        output = self.module(hidden_states)
        theirs = hidden_states.index_select(0, rows)
        if isinstance(self.change, tuple):
            down, up = self.change
            return output.index_add(0, rows, (theirs @ down.T) @ up.T)
        return output.index_copy(0, rows, self.change(theirs))


class _TwoBlocks(torch.nn.Module):
    """One top block: the base model's on its rows, the counterfactual model's on the others."""

    def __init__(self, block: torch.nn.Module, other: torch.nn.Module, towers: TwoTowers) -> None:
        super().__init__()
        # Not registered as submodules: this wrapper lives only for a forward pass.
        self.__dict__["sides"] = (block, other)
        self.__dict__["towers"] = towers

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        split = self.towers._split
        assert split is not None
        batch = hidden_states.shape[0]
        output = torch.empty_like(hidden_states)
        written: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        for block, rows in zip(self.sides, split, strict=True):
            if not rows.numel():
                continue
            dtype = next(block.parameters()).dtype
            result = block(
                hidden_states.index_select(0, rows).to(dtype),
                *(_take(value, rows, batch, dtype) for value in args),
                **{name: _take(value, rows, batch, dtype, written) for name, value in kwargs.items()},
            )
            part = result[0] if isinstance(result, tuple) else result
            output.index_copy_(0, rows, part.to(output.dtype))
        cache = next((value for value in kwargs.values() if _is_cache(value)), None)
        if cache is not None:
            for layer, parts in written.items():
                keys, values = _scatter(parts, batch, hidden_states.dtype)
                cache.update(keys, values, layer)
        return output


def _is_cache(value: Any) -> bool:
    from transformers.cache_utils import Cache

    return isinstance(value, Cache)


def _take(value: Any, rows: torch.Tensor, batch: int, dtype: torch.dtype, written: dict | None = None) -> Any:
    """``value`` (an argument of a block) for ``rows`` only, in the block's ``dtype``: batch-first tensors of
    two or more dimensions are cut, tuples of them too (the rotary position embeddings), floating-point ones
    cast, and a key-value cache becomes a view of those rows."""
    if written is not None and _is_cache(value):
        return _CacheRows(value, rows, written)
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == batch:
            value = value.index_select(0, rows)
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_take(item, rows, batch, dtype) for item in value)
    return value


def _scatter(
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], batch: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's new keys and values for the whole batch, from each side's rows, in the base model's
    ``dtype`` (the cache's, whichever sides the batch holds)."""
    first_keys, first_values = parts[0][1], parts[0][2]
    keys = first_keys.new_empty((batch, *first_keys.shape[1:]), dtype=dtype)
    values = first_values.new_empty((batch, *first_values.shape[1:]), dtype=dtype)
    for rows, part_keys, part_values in parts:
        keys.index_copy_(0, rows, part_keys.to(dtype))
        values.index_copy_(0, rows, part_values.to(dtype))
    return keys, values


class _CacheRows:
    """What a block sees of the batch's key-value cache: its rows' keys and values so far, with the new ones
    after them; the new ones are kept aside and written for the whole batch once both sides have run."""

    def __init__(self, cache: Any, rows: torch.Tensor, written: dict) -> None:
        self.cache, self.rows, self.written = cache, rows, written

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.written.setdefault(layer_idx, []).append((self.rows, keys, values))
        layer = self.cache.layers[layer_idx] if layer_idx < len(self.cache.layers) else None
        past_keys = getattr(layer, "keys", None)
        if past_keys is None or not past_keys.numel():
            return keys, values
        past_values = layer.values
        return (
            torch.cat([past_keys.index_select(0, self.rows).to(keys.dtype), keys], dim=-2),
            torch.cat([past_values.index_select(0, self.rows).to(values.dtype), values], dim=-2),
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cache, name)
