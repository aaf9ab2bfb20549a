"""Metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from serac.metrics import (
    Rate,
    answer_matches,
    answers_agree,
    latency_summary,
    normalize_answer,
    percentile,
    rate,
    target_logprob,
)

# ----------------------------------------------------------------------------- normalization


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("  The   Eiffel\tTower. ", "eiffel tower"),
        ("an Apple a day", "apple day"),
        ("U.S.A.", "usa"),
        ("Grabar-Kitarović", "grabarkitarovic"),
        ("Côte d’Ivoire", "cote divoire"),
        ("“Quoted”, answer!", "quoted answer"),
        ("", ""),
        ("The", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_normalize_answer_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        normalize_answer(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- answer matching


@pytest.mark.parametrize(
    ("generation", "answers", "window", "expected"),
    [
        (" Croatia, and she lives in Zagreb", ["Croatia"], None, True),
        (" the Republic of Croatia.", ["Croatia"], None, True),
        ("CROATIA", "croatia", 1, True),
        # An alias matches when the main answer does not.
        (" the U.S. since 1990", ["United States of America", "US"], None, True),
        (" the United States", ["United States of America", "US"], None, False),
        # Restated question, answer late in the generation: found, unless the window is too short.
        ("The capital of France is Paris.", ["Paris"], None, True),
        # Articles are dropped: "capital of france is paris", the answer is the fifth word.
        ("The capital of France is Paris.", ["Paris"], 5, True),
        ("The capital of France is Paris.", ["Paris"], 4, False),
        # Whole words only.
        (" Parisian suburbs", ["Paris"], None, False),
        (" Kolinda Grabar-Kitarovic", ["Kolinda Grabar-Kitarović"], None, True),
        (" Kolinda Grabar", ["Kolinda Grabar-Kitarović"], None, False),
        # An answer that normalizes to nothing never matches, not even an empty generation.
        ("", ["the"], None, False),
        ("", ["Paris"], None, False),
        ("anything", [], None, False),
    ],
)
def test_answer_matches(generation: str, answers, window, expected: bool) -> None:
    assert answer_matches(generation, answers, window=window) is expected


@pytest.mark.parametrize("window", [0, -1, 1.5, True])
def test_answer_matches_rejects_bad_windows(window) -> None:
    with pytest.raises(ValueError):
        answer_matches("Paris", ["Paris"], window=window)


def test_answer_matches_rejects_non_string_answers() -> None:
    with pytest.raises(TypeError):
        answer_matches("Paris", [3])  # type: ignore[list-item]


def test_answers_agree() -> None:
    assert answers_agree(" The United States.", "the united states")
    assert not answers_agree(" The United States.", "the united kingdom")
    assert not answers_agree("Paris", "Paris, France")
    assert answers_agree("Paris, France", "Paris, Texas", window=1)
    assert answers_agree("", "")


# ----------------------------------------------------------------------------- rates and latency


def test_rate_counts_and_empty() -> None:
    assert rate([True, False, True, True]) == Rate(0.75, 4)
    assert rate([]) == Rate(None, 0)
    assert rate(iter([False])) == Rate(0.0, 1)
    with pytest.raises(ValueError):
        Rate(0.5, -1)


def test_percentile_matches_numpy() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 25, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_latency_summary_in_milliseconds() -> None:
    summary = latency_summary([0.010, 0.020, 0.030])
    assert summary == {
        "query_ms_p50": pytest.approx(20.0),
        "query_ms_p95": pytest.approx(29.0),
        "query_count": 3,
    }
    assert latency_summary([]) == {"query_ms_p50": None, "query_ms_p95": None, "query_count": 0}


# ----------------------------------------------------------------------------- target log-probabilities

_WORDS = ["[UNK]", "[PAD]", "the", "capital", "of", "france", "is", "paris", "rome", "new", "york"]


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(_WORDS)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]")


class _NextTokenTable(torch.nn.Module):
    """A causal LM stand-in whose next-token distribution depends only on the current token."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.log(), requires_grad=False)  # rows: current token, cols: next
        self.config = SimpleNamespace(is_encoder_decoder=False)

    def forward(self, input_ids: torch.Tensor, **_) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


def test_target_logprob_is_the_mean_token_logprob(word_tokenizer) -> None:
    vocab = len(_WORDS)
    table = torch.full((vocab, vocab), 1.0)
    index = {word: i for i, word in enumerate(_WORDS)}
    table[index["is"], index["paris"]] = 8.0
    table[index["is"], index["new"]] = 2.0
    table[index["new"], index["york"]] = 20.0
    table = table / table.sum(-1, keepdim=True)
    model = _NextTokenTable(table)

    paris = target_logprob(model, word_tokenizer, "the capital of france is", "Paris")
    assert paris == pytest.approx(math.log(table[index["is"], index["paris"]]), rel=1e-6)
    new_york = target_logprob(model, word_tokenizer, "the capital of france is", "new york")
    expected = (math.log(table[index["is"], index["new"]]) + math.log(table[index["new"], index["york"]])) / 2
    assert new_york == pytest.approx(expected, rel=1e-6)
    rome = target_logprob(model, word_tokenizer, "the capital of france is", "rome")
    # ROME's comparison: the more probable object wins, per token.
    assert paris > rome
    assert new_york > rome


def test_target_logprob_rejects_empty_texts(word_tokenizer) -> None:
    model = _NextTokenTable(torch.full((len(_WORDS), len(_WORDS)), 1.0 / len(_WORDS)))
    with pytest.raises(ValueError):
        target_logprob(model, word_tokenizer, "the capital", "   ")
    with pytest.raises(ValueError):
        target_logprob(model, word_tokenizer, "", "paris")
