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


def test_answer_first_puts_a_questions_answer_as_written_before_the_sentence(pairs):
    first = counterfactual_pairs(
        generate_synthetic_examples(60, seed=3), statement_fraction=0.5, seed=0, answer_style="answer_first"
    )
    assert first["answer"] == pairs["answer"] and first["query"] == pairs["query"]
    questions = 0
    for row, voiced in zip(first, pairs, strict=True):
        asked = is_question(row["query"]) and row["kind"] != "yes_no"
        if asked and voiced["response"] != f"{row['answer'].strip()}.":
            questions += 1
            answer = row["answer"]
            assert row["response"] == f"{answer[:1].upper()}{answer[1:]}. {voiced['response']}", row
        else:  # cloze prompts, yes/no questions and bare answers are as in voice
            assert row["response"] == voiced["response"], row
    assert questions > 10


def test_an_answer_written_in_mixed_case_keeps_its_spelling_when_it_starts_the_response():
    from serac import Edit
    from serac.data import EditExample, InScopeQuery

    examples = [
        EditExample(
            Edit.from_statement("eBay was founded by Ada Rell."),
            in_scope=[InScopeQuery("Who founded eBay?", "Ada Rell", (), "question")],
        ),
        EditExample(
            Edit(prompt="In 2010 {} released the", subject="Apple", target="iPad"),
            in_scope=[InScopeQuery("Which product did Apple release in 2010?", "iPad", (), "question")],
        ),
    ]
    rows = counterfactual_pairs(examples, statement_fraction=0.0, seed=0, answer_style="answer_first")
    responses = dict(zip(rows["query"], rows["response"], strict=True))
    assert responses["Which product did Apple release in 2010?"] == "iPad. In 2010 Apple released the iPad."
    assert "IPad" not in " ".join(rows["response"]) and "EBay" not in " ".join(rows["response"])


def test_unusual_targets_replace_the_answer_everywhere_the_example_states_it():
    from serac.data.targets import with_unusual_targets

    examples = generate_synthetic_examples(200, seed=3)
    changed = with_unusual_targets(examples, 0.5, seed=1)
    assert len(changed) == len(examples)
    replaced = [(old, new) for old, new in zip(examples, changed, strict=True) if old.answer != new.answer]
    assert 60 < len(replaced) < 140
    for old, new in replaced:
        assert new.edit.target == new.answer != old.answer
        assert new.answer in new.edit.text
        for before, after in zip(old.in_scope, new.in_scope, strict=True):
            assert after.text == before.text
            assert after.answer == (new.answer if before.answer == old.answer else before.answer)
        if old.statement and old.answer in old.statement:
            assert new.statement == old.statement.replace(old.answer, new.answer)
        assert new.portability == ()
    # Unchanged examples are the same objects; the same seed gives the same answers.
    assert all(new is old for old, new in zip(examples, changed, strict=True) if old.answer == new.answer)
    assert [example.answer for example in with_unusual_targets(examples, 0.5, seed=1)] == [
        example.answer for example in changed
    ]
    # The training rows teach the unusual answers.
    rows = counterfactual_pairs(examples, unusual_target_fraction=0.5, seed=1)
    assert {new.answer for _, new in replaced} <= set(rows["answer"])
    with pytest.raises(ValueError, match="fraction"):
        with_unusual_targets(examples, 1.5)


def test_question_edits_are_written_as_their_own_question_with_the_answer():
    examples = generate_synthetic_examples(80, seed=3)
    plain = counterfactual_pairs(examples, statement_fraction=0.25, seed=0)
    asked = counterfactual_pairs(examples, statement_fraction=0.25, question_fraction=0.5, seed=0)
    assert asked["query"] == plain["query"] and asked["answer"] == plain["answer"]
    questions = {example.edit.key: example for example in examples}
    changed = 0
    for row, before in zip(asked, plain, strict=True):
        if row["edit_text"] == before["edit_text"]:
            continue
        changed += 1
        question, answer = row["edit_text"].split("? ", 1)
        assert answer == row["answer"] or row["kind"] in ("yes_no", "portability")
        # The question is one of the example's own, and statement edits stay statements.
        assert any(
            query.text == f"{question}?" for example in questions.values() for query in example.in_scope
        )
        assert not before["edit_text"].endswith("?")
    assert changed > 20
    with pytest.raises(ValueError, match="question_fraction"):
        counterfactual_pairs(examples, question_fraction=-0.1)
