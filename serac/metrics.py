"""Metrics of model editing: answer matching, rates with their counts, latency percentiles, target scores.

The benchmark (``benchmarks/run.py``) generates an answer for every query and scores it here. The
definitions follow the knowledge-editing literature:

* **efficacy** (ROME "efficacy", SERAC "edit success", Yao et al. 2023 "reliability"): the edit's own prompt
  yields the new target;
* **paraphrase** (ROME "paraphrase", Yao et al. "generalization"): in-scope rephrasings yield the new target;
* **locality** (SERAC ``1 - drawdown``, Yao et al. "locality"): an out-of-scope query gets the same answer
  as the unedited model gave;
* **portability** (MQuAKE multi-hop accuracy, Yao et al. "portability"): a multi-hop question whose answer
  the edit changes is answered with the new answer.

A generated continuation *matches* an answer when, after :func:`normalize_answer`, the answer's words occur
as a contiguous run in the generation (whole words, so "Paris" does not match "Parisian"). Any of the
answer's aliases may match. Generations are short (``max_new_tokens``), and small instruction-tuned models
restate the question before answering ("The capital of France is Paris."), so by default the answer may
start anywhere in the generation; ``window=N`` requires it to start within the first ``N`` words
(``window=1``: a strict prefix match). Two generations *agree* (locality) when their normalized words are
identical (or their first ``window`` words, if given).

For CounterFact-style data the probability comparison of ROME is available through :func:`target_logprob`:
the mean per-token log-probability of a target after a prompt, teacher-forced.

The hypernetwork-editing literature (MEND, Mitchell et al. 2022, Sec. 5; SaLEM, Mishra et al. 2024) reads
two teacher-forced numbers instead of generations, both through :func:`top1_hits`:

* **edit success (ES)**: the share of edit prompts after which the new target is the model's top-1
  prediction at every one of its tokens (teacher-forced);
* **drawdown (DD)**: how much accuracy the edit costs on out-of-scope queries: the share of out-of-scope
  queries with a known answer that the unedited model gets top-1 right at every token, minus the same share
  for the edited model (positive: the edit broke answers; 0: no harm);
* **token drawdown (DD tok)**: the same over answer *tokens*: the share of the out-of-scope answers' tokens
  that are the unedited model's top-1 prediction, minus the same share for the edited model. This is the
  accuracy MEND's code averages (per token, not per answer); it still measures something where a small
  model gets few whole answers right.

Example:
    >>> normalize_answer("The  U.S.A.!")
    'usa'
    >>> answer_matches("Croatia, since 2020.", ["Republic of Croatia", "Croatia"])
    True
    >>> answer_matches("She lives in Paris but is a citizen of Croatia", ["Croatia"], window=3)
    False
    >>> answer_matches("He moved to Parisian suburbs", "Paris")
    False
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Rate",
    "answer_matches",
    "answers_agree",
    "latency_summary",
    "normalize_answer",
    "percentile",
    "rate",
    "target_logprob",
    "top1_correct",
    "top1_hits",
]

# SQuAD-style normalization (Rajpurkar et al. 2016), the usual one for short-answer exact match.
_ARTICLES = frozenset({"a", "an", "the"})


def normalize_answer(text: str) -> str:
    """Case-fold, strip accents and punctuation, drop English articles, collapse whitespace.

    Punctuation is deleted rather than replaced by a space, as in SQuAD, so ``"U.S."`` and ``"US"`` agree.
    Accents are stripped because models often write names without diacritics.

    Raises:
        TypeError: if ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    decomposed = unicodedata.normalize("NFKD", text)
    kept = []
    for char in decomposed:
        category = unicodedata.category(char)
        if category == "Mn":  # combining accent
            continue
        if category[0] in "PS":  # punctuation and symbols (quotes, dashes, currency signs, ...)
            continue
        kept.append(char)
    words = "".join(kept).casefold().split()
    return " ".join(word for word in words if word not in _ARTICLES)


def _as_answers(answers: str | Iterable[str]) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    answers = list(answers)
    for answer in answers:
        if not isinstance(answer, str):
            raise TypeError(f"answers must be strings, got {type(answer).__name__}")
    return answers


def _check_window(window: int | None) -> None:
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be None or a positive integer, got {window!r}")


def answer_matches(generation: str, answers: str | Iterable[str], *, window: int | None = None) -> bool:
    """Whether a generated continuation gives one of ``answers`` (an answer and its aliases).

    True when the normalized words of some answer occur contiguously in the normalized generation (starting
    at one of its first ``window`` words, if ``window`` is given). Answers that normalize to nothing (e.g.
    ``"the"``) never match.

    Raises:
        TypeError: on non-string input.
        ValueError: if ``window`` is not a positive integer.
    """
    _check_window(window)
    words = normalize_answer(generation).split()
    for answer in _as_answers(answers):
        target = normalize_answer(answer).split()
        if not target:
            continue
        last_start = len(words) - len(target) + 1
        if window is not None:
            last_start = min(window, last_start)
        for start in range(max(last_start, 0)):
            if words[start : start + len(target)] == target:
                return True
    return False


def answers_agree(generation: str, reference: str, *, window: int | None = None) -> bool:
    """Whether two generations give the same answer: their normalized words (the first ``window``) are equal.

    Used for locality, where ``reference`` is what the unedited model generated for the same query.
    """
    _check_window(window)
    return normalize_answer(generation).split()[:window] == normalize_answer(reference).split()[:window]


@dataclass(frozen=True)
class Rate:
    """A fraction of successes with the number of cases it was computed on (``value`` is None when 0)."""

    value: float | None
    count: int

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")


def rate(outcomes: Iterable[bool]) -> Rate:
    """The share of true outcomes; ``Rate(None, 0)`` for no outcomes, so a missing metric is never 0."""
    outcomes = [bool(outcome) for outcome in outcomes]
    if not outcomes:
        return Rate(None, 0)
    return Rate(sum(outcomes) / len(outcomes), len(outcomes))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation) of ``values``; None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(float(value) for value in values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """Median and 95th percentile of per-query latencies, in milliseconds, with the number of queries."""
    milliseconds = [1000.0 * value for value in seconds]
    return {
        "query_ms_p50": percentile(milliseconds, 50),
        "query_ms_p95": percentile(milliseconds, 95),
        "query_count": len(milliseconds),
    }


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _target_logits(model: Any, tokenizer: Any, prompt: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced logits that predict ``target``'s tokens after ``prompt``, and those tokens.

    Causal LMs read ``prompt + " " + target``; encoder-decoder models read the prompt and produce the target
    as the decoder output. The model is called as an evaluation loop calls it (``labels`` of -100 on the
    prompt), so an :class:`~serac.modeling.EditableModel` routes by the prompt and applies its edits.
    """
    device = _model_device(model)
    if getattr(model.config, "is_encoder_decoder", False):
        encoded = tokenizer(prompt, return_tensors="pt").to(device)
        labels = tokenizer(text_target=target, return_tensors="pt").input_ids.to(device)
        if labels.numel() == 0:
            raise ValueError(f"target {target!r} has no tokens")
        return model(**encoded, labels=labels).logits[0], labels[0]
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids[0]
    if prompt_ids.numel() == 0:
        raise ValueError(f"prompt {prompt!r} has no tokens")
    # The target is tokenized on its own, after a space, so its tokens are the same whatever the prompt
    # ends with; the concatenation is what generation would have produced at a word boundary.
    target_ids = tokenizer(" " + target.strip(), add_special_tokens=False, return_tensors="pt").input_ids[0]
    if target_ids.numel() == 0:
        raise ValueError(f"target {target!r} has no tokens")
    input_ids = torch.cat([prompt_ids, target_ids]).unsqueeze(0).to(device)
    labels = torch.cat([torch.full_like(prompt_ids, -100), target_ids]).unsqueeze(0).to(device)
    logits = model(input_ids=input_ids, labels=labels).logits[0]
    # Logits at position i predict token i + 1: the target's tokens are predicted by the positions before them.
    return logits[len(prompt_ids) - 1 : -1], target_ids.to(device)


@torch.no_grad()
def target_logprob(model: Any, tokenizer: Any, prompt: str, target: str) -> float:
    """Mean per-token log-probability of ``target`` following ``prompt`` (teacher-forced).

    The length-normalized score that ROME's CounterFact evaluation compares between the new and the true
    object. Causal LMs score ``prompt + " " + target``; encoder-decoder models read the prompt and score the
    target as the decoder output. The model is called as an evaluation loop calls it (``labels`` of -100 on
    the prompt), so an :class:`~serac.modeling.EditableModel` scores with its edits applied.

    Raises:
        ValueError: if ``target`` tokenizes to nothing.
    """
    logits, target_ids = _target_logits(model, tokenizer, prompt, target)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return float(logprobs.gather(-1, target_ids.unsqueeze(-1)).mean())


@torch.no_grad()
def top1_hits(model: Any, tokenizer: Any, prompt: str, target: str) -> tuple[int, int]:
    """How many of ``target``'s tokens after ``prompt`` are the model's top-1 prediction (teacher-forced), and
    how many tokens it has: the unit of edit success and both drawdowns.

    Tokenized as in :func:`target_logprob`.

    Raises:
        ValueError: if ``target`` tokenizes to nothing.
    """
    logits, target_ids = _target_logits(model, tokenizer, prompt, target)
    return int((logits.argmax(-1) == target_ids).sum()), int(target_ids.numel())


def top1_correct(model: Any, tokenizer: Any, prompt: str, target: str) -> bool:
    """Whether every token of ``target`` after ``prompt`` is the model's top-1 prediction (teacher-forced).

    Raises:
        ValueError: if ``target`` tokenizes to nothing.
    """
    hits, tokens = top1_hits(model, tokenizer, prompt, target)
    return hits == tokens
