"""Second-moment statistics ``C = E[k k^T]`` of the inputs ``k`` to the edited down-projections.

ROME and MEMIT use ``C`` to make an update touch the key of the edit while disturbing the keys the layer
usually sees as little as possible. The statistics come from running the base model over a text corpus:

* a corpus you name: a local text file (one document per line), a folder written by
  ``datasets.Dataset.save_to_disk``, a ``datasets.Dataset`` with a ``text`` column, or a list of strings;
* by default (the Wikipedia sample of the papers cannot be downloaded here), **text the base model
  generates itself** by sampling from a fixed list of diverse short seeds with a fixed random seed.
  Why this corpus: it needs nothing beyond the model, it is deterministic, it is independent of any
  edit data (so the statistics never leak evaluation records), and its keys come from the model's own
  distribution over ordinary prose, which is what ``C`` is meant to describe (the directions the layer
  uses for text in general). Its weakness is less topical breadth than Wikipedia; the seeds span
  people, places, science, history, sport, arts and everyday text to counter that.

Statistics are cached on disk under ``serac.offline.cache_dir() / "stats"``, keyed by a model
fingerprint (name, architecture, and a hash of the token embedding, which editors never touch), the
module, the corpus and the number of token vectors, and reused by later runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from serac.editors.base import model_device, pad_batch, pad_token_id
from serac.editors.layout import ModelLayout, get_layout, get_module
from serac.files import write_bytes_atomic

__all__ = [
    "DEFAULT_CORPUS_SEEDS",
    "StopForward",
    "generated_corpus",
    "layer_second_moments",
    "model_fingerprint",
]

logger = logging.getLogger(__name__)

STATS_SUBDIR = "stats"
CORPUS_SUBDIR = "corpora"

#: Seeds of the default self-generated corpus: short openings spread over many topics and registers.
DEFAULT_CORPUS_SEEDS: tuple[str, ...] = (
    "The history of",
    "In 1905,",
    "The city of",
    "Scientists have found that",
    "She was born in",
    "The river",
    "During the war,",
    "The company announced",
    "My favourite recipe",
    "The band released",
    "According to the report,",
    "The novel tells",
    "He played for",
    "The capital of",
    "In mathematics,",
    "The museum",
    "Yesterday I",
    "The election",
    "The species is",
    "The university of",
    "The film was directed by",
    "In the early years",
    "The church",
    "Researchers at",
    "The king",
    "Football is",
    "The album",
    "The language",
    "Our team",
    "The island",
    "The president said",
    "Music in",
    "The painting",
    "The law",
    "Water is",
    "The mountain",
    "The school",
    "In medicine,",
    "The airport",
    "The festival",
)


def model_fingerprint(model: nn.Module, layout: ModelLayout | None = None) -> str:
    """A short id of the base model that stays the same while editors change MLP weights.

    Name and config say which architecture and checkpoint it claims to be; a hash of a slice of the token
    embedding tells apart fine-tuned variants saved under the same name (editors never touch it).
    """
    layout = layout or get_layout(model)
    config = model.config
    name = Path(str(getattr(config, "_name_or_path", "") or type(model).__name__)).name
    embedding = get_module(model, layout.embedding).weight.detach()
    digest = hashlib.sha1(json.dumps(config.to_diff_dict(), sort_keys=True, default=str).encode())
    digest.update(embedding[: min(64, embedding.shape[0])].float().cpu().numpy().tobytes())
    safe_name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:60]
    return f"{safe_name}-{digest.hexdigest()[:12]}"


def _fork_rng_devices(model: nn.Module) -> list[int]:
    device = model_device(model)
    return [device.index or 0] if device.type == "cuda" else []


@torch.no_grad()
def sample_texts(
    model: nn.Module,
    tokenizer: Any,
    seeds: Sequence[str],
    *,
    max_new_tokens: int,
    seed: int,
    top_k: int,
    batch_size: int = 32,
) -> list[str]:
    """Sample one continuation per seed, deterministically and without touching the global RNG."""
    pad_id = pad_token_id(tokenizer)
    texts: list[str] = []
    with torch.random.fork_rng(devices=_fork_rng_devices(model)):
        torch.manual_seed(seed)
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            encoded = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in chunk]
            input_ids, attention_mask = pad_batch(encoded, pad_id, model_device(model), left=True)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                top_k=top_k,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
            )
            for row, seed_text in enumerate(chunk):
                new_tokens = output[row, input_ids.shape[1] :]
                texts.append(seed_text + tokenizer.decode(new_tokens, skip_special_tokens=True))
    return texts


def generated_corpus(
    model: nn.Module,
    tokenizer: Any,
    num_tokens: int,
    *,
    seeds: Sequence[str] = DEFAULT_CORPUS_SEEDS,
    tokens_per_text: int = 128,
    seed: int = 0,
    cache: bool = True,
    cache_root: str | Path | None = None,
):
    """The default corpus: about ``num_tokens`` tokens of text the model samples from ``seeds`` (cached)."""
    import datasets

    from serac.offline import cache_dir

    num_texts = -(-num_tokens // tokens_per_text)
    root = Path(cache_root) if cache_root is not None else cache_dir()
    stem = f"{model_fingerprint(model)}-gen{seed}-{tokens_per_text}x"
    path = root / CORPUS_SUBDIR / f"{stem}{num_texts}"
    if cache:
        # A larger cached corpus of the same recipe serves a smaller request: its first texts are the
        # same samples, because each round of seeds draws from its own RNG stream (seeded by round).
        for candidate in sorted(
            (root / CORPUS_SUBDIR).glob(f"{stem}*"), key=lambda p: int(p.name[len(stem) :])
        ):
            if int(candidate.name[len(stem) :]) >= num_texts and (candidate / "dataset_info.json").exists():
                return datasets.load_from_disk(str(candidate)).select(range(num_texts))
    # Whole rounds only, so round r is always the same batch and gives the same samples whatever the
    # requested size; this is what makes reusing a larger cached corpus exact.
    num_rounds = -(-num_texts // len(seeds))
    texts: list[str] = []
    for round_index in tqdm(range(num_rounds), desc="generating statistics corpus", unit="round"):
        texts += sample_texts(
            model,
            tokenizer,
            list(seeds),
            max_new_tokens=tokens_per_text,
            seed=seed * 100003 + round_index,
            top_k=50,
        )
    dataset = datasets.Dataset.from_dict({"text": texts[:num_texts]})
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_to_disk(str(path))
    return dataset


def _load_corpus(corpus: Any):
    """A ``datasets.Dataset`` with a ``text`` column and a stable name for cache keys."""
    import datasets

    if isinstance(corpus, datasets.Dataset):
        if "text" not in corpus.column_names:
            raise ValueError(f"the corpus Dataset needs a 'text' column, has {corpus.column_names}")
        return corpus, f"dataset-{corpus._fingerprint}"
    if isinstance(corpus, (list, tuple)):
        if not corpus or not all(isinstance(text, str) for text in corpus):
            raise TypeError("a corpus given as a list must be a non-empty list of strings")
        digest = hashlib.sha1("\x00".join(corpus).encode()).hexdigest()[:12]
        return datasets.Dataset.from_dict({"text": list(corpus)}), f"list-{digest}"
    if isinstance(corpus, (str, Path)):
        path = Path(corpus).expanduser()
        if path.is_dir():
            dataset = datasets.load_from_disk(str(path))
        elif path.is_file():
            dataset = datasets.load_dataset("text", data_files=str(path), split="train")
        else:
            raise ValueError(f"corpus path {str(path)!r} does not exist")
        if "text" not in dataset.column_names:
            raise ValueError(f"the corpus at {path} needs a 'text' column, has {dataset.column_names}")
        stat = path.stat()
        return (
            dataset,
            f"path-{hashlib.sha1(f'{path.resolve()}:{stat.st_mtime_ns}'.encode()).hexdigest()[:12]}",
        )
    raise TypeError(
        "corpus must be None, a path (text file or saved datasets folder), a datasets.Dataset or a list of str; "
        f"got {type(corpus).__name__}"
    )


class StopForward(Exception):
    """Raised by a hook once every needed activation was seen, to skip the rest of the forward pass."""


def layer_second_moments(
    model: nn.Module,
    tokenizer: Any,
    layers: Sequence[int],
    *,
    corpus: Any = None,
    num_samples: int = 20_000,
    max_length: int = 128,
    batch_size: int = 16,
    cache: bool = True,
    cache_root: str | Path | None = None,
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """``E[k k^T]`` (float64, uncentered) of the inputs to each layer's down-projection.

    Args:
        layers: block indices whose down-projection inputs are measured (one pass serves them all).
        corpus: see the module docstring; ``None`` is the model's self-generated corpus.
        num_samples: number of token vectors (non-padding positions) averaged over.
        max_length: longest tokenized text; longer ones are cut.
        cache: read and write the on-disk cache.
        cache_root: overrides ``serac.offline.cache_dir()``.
        progress: show a tqdm bar.

    Returns:
        ``{layer: C}`` with ``C`` of shape [in, in] on the CPU.
    """
    from serac.offline import cache_dir

    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    layout = get_layout(model)
    layers = sorted(set(layers))
    root = Path(cache_root) if cache_root is not None else cache_dir()
    fingerprint = model_fingerprint(model, layout)

    if corpus is None:
        corpus_name = "generated0"
        dataset = None  # generated only when some layer misses the cache
    else:
        dataset, corpus_name = _load_corpus(corpus)

    def cache_path(layer: int) -> Path:
        module = layout.down_proj.format(layer)
        return root / STATS_SUBDIR / fingerprint / f"{module}-{corpus_name}-{num_samples}.pt"

    result: dict[int, torch.Tensor] = {}
    missing = []
    for layer in layers:
        path = cache_path(layer)
        if cache and path.exists():
            result[layer] = torch.load(path, map_location="cpu", weights_only=True)["second_moment"]
        else:
            missing.append(layer)
    if not missing:
        return result
    if dataset is None:
        dataset = generated_corpus(model, tokenizer, num_samples, cache=cache, cache_root=root)

    device = model_device(model)
    sums: dict[int, torch.Tensor] = {}
    mask_holder: dict[str, torch.Tensor] = {}
    last_layer = max(missing)

    def make_hook(layer: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            keys = inputs[0][mask_holder["mask"]].double()
            product = keys.T @ keys
            sums[layer] = product if layer not in sums else sums[layer] + product
            if layer == last_layer:
                raise StopForward

        return hook

    handles = [
        get_module(model, layout.down_proj.format(layer)).register_forward_pre_hook(make_hook(layer))
        for layer in missing
    ]
    pad_id = pad_token_id(tokenizer)
    count = 0
    bar = tqdm(total=num_samples, desc="second moments", unit="tok", disable=not progress)
    try:
        with torch.no_grad():
            index = 0
            while count < num_samples and index < len(dataset):
                texts = [t for t in dataset[index : index + batch_size]["text"] if t and t.strip()]
                index += batch_size
                if not texts:
                    continue
                encoded = [
                    tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)[
                        "input_ids"
                    ]
                    for text in texts
                ]
                input_ids, attention_mask = pad_batch(encoded, pad_id, device)
                mask = attention_mask.bool()
                # Keep exactly num_samples vectors so the same request always averages the same set.
                overflow = int(mask.sum()) - (num_samples - count)
                if overflow > 0:
                    flat = mask.flatten().nonzero().squeeze(1)
                    mask.view(-1)[flat[len(flat) - overflow :]] = False
                mask_holder["mask"] = mask
                with contextlib.suppress(StopForward):
                    model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                added = int(mask.sum())
                count += added
                bar.update(added)
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
    if count < num_samples:
        logger.warning("the corpus gave only %d of the %d requested token vectors", count, num_samples)
    for layer in missing:
        second_moment = (sums[layer] / count).cpu()
        result[layer] = second_moment
        if cache:
            path = cache_path(layer)
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            torch.save({"second_moment": second_moment, "count": count}, buffer)
            write_bytes_atomic(path, buffer.getvalue())
    return result
