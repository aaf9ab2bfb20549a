"""Edited answers in the base model's voice: a question gets a sentence, a cloze prompt a continuation."""

from __future__ import annotations

import pytest

from serac.data.pairs import counterfactual_pairs, is_question, response_in_voice
from serac.data.synthetic import generate_synthetic_examples
from serac.metrics import answer_matches


@pytest.fixture(scope="module")
def pairs():
    return counterfactual_pairs(generate_synthetic_examples(60, seed=3), statement_fraction=0.5, seed=0)


def test_questions_are_answered_with_a_sentence_stating_the_new_answer(pairs):
    rows = [row for row in pairs if row["kind"] == "question"]
    assert rows
    for row in rows:
        response = row["response"]
        assert answer_matches(response, [row["answer"]]), row  # the metrics' answer is still in it
        assert len(response.split()) > len(row["answer"].split()) + 2, row  # a sentence, not the span
        assert response.endswith(".") and response[0].isupper()


def test_cloze_prompts_are_continued(pairs):
    rows = [row for row in pairs if not is_question(row["query"])]
    assert rows
    for row in rows:
        assert row["response"] == row["answer"].strip() + "."


def test_yes_no_questions_answer_yes_or_no_first(pairs):
    rows = [row for row in pairs if row["kind"] == "yes_no"]
    assert {row["answer"] for row in rows} == {"yes", "no"}
    for row in rows:
        assert row["response"].startswith(f"{row['answer'].capitalize()}.")


def test_the_answer_column_keeps_the_bare_target_for_metrics(pairs):
    bare = counterfactual_pairs(
        generate_synthetic_examples(60, seed=3), statement_fraction=0.5, seed=0, answer_style="bare"
    )
    assert bare["answer"] == pairs["answer"]
    assert bare["response"] == bare["answer"]
    with pytest.raises(ValueError, match="answer_style"):
        counterfactual_pairs(generate_synthetic_examples(2, seed=3), answer_style="chatty")


def test_response_in_voice_without_a_sentence_falls_back_to_the_answer():
    assert (
        response_in_voice("Who leads the country whose leader is X?", "Lisbon", "portability", None)
        == "Lisbon."
    )
    assert response_in_voice("Is it so?", "no", "yes_no", None) == "No."


def test_training_teaches_the_response_and_metrics_read_the_answer(pairs, char_tokenizer):
    from serac.counterfactual import CounterfactualModel
    from serac.training.counterfactual import _CounterfactualCollator

    from .conftest import make_tiny_llama

    counterfactual = CounterfactualModel(make_tiny_llama(char_tokenizer), char_tokenizer)
    rows = [row for row in pairs if row["kind"] == "question"][:2] + [
        row for row in pairs if row["kind"] == "cloze"
    ][:2]
    batch = _CounterfactualCollator(counterfactual)(rows)
    for labels, row in zip(batch["labels"], rows, strict=True):
        taught = char_tokenizer.decode(labels[labels != -100], skip_special_tokens=True)
        assert taught.strip() == row["response"]
