"""A counterfactual model's answer keeps the edit's new answer as written once it has begun to write it."""

from __future__ import annotations

import pytest
import torch

from serac import Edit
from serac.counterfactual import AnswerCopy, CounterfactualConfig, CounterfactualModel

from .conftest import make_tiny_llama

ANSWER = [5, 6, 7, 8]


def scores_after(written: list[int], answers=(ANSWER,), after: int = 2) -> torch.Tensor:
    prompt = [1, 2, 3]
    input_ids = torch.tensor([prompt + written])
    return AnswerCopy(list(answers), start=len(prompt), after=after)(input_ids, torch.zeros(1, 12))


def test_a_row_that_began_the_answer_is_made_to_write_its_next_token():
    for written, expected in (([5, 6], 7), ([9, 5, 6, 7], 8), ([5, 6, 5, 6], 7)):
        scores = scores_after(written)
        assert scores[0].argmax().item() == expected
        assert (scores[0] < -1e30).sum().item() == 11  # every other token ruled out


@pytest.mark.parametrize(
    "written",
    [
        [],  # nothing written yet
        [5],  # one token of the answer: fewer than `after`
        [5, 6, 7, 8],  # the whole answer: nothing left to copy
        [6, 7],  # the middle of the answer is not its beginning
        [5, 9],  # begun, then left: the model's own words
    ],
)
def test_other_rows_are_left_alone(written):
    assert torch.equal(scores_after(written), torch.zeros(1, 12))


def test_rows_without_an_answer_or_with_a_short_one_are_left_alone():
    assert torch.equal(scores_after([5, 6], answers=(None,)), torch.zeros(1, 12))
    assert torch.equal(scores_after([5, 6], answers=([5, 6],)), torch.zeros(1, 12))
    with pytest.raises(ValueError, match="after"):
        AnswerCopy([ANSWER], start=0, after=0)
    with pytest.raises(ValueError, match="copy_answer_after"):
        CounterfactualConfig(copy_answer_after=-1)


class ForceFirst:
    """A caller's logits processor that makes every row write ``tokens`` first."""

    def __init__(self, tokens: list[int], start: int) -> None:
        self.tokens, self.start = tokens, start

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.start
        if step < len(self.tokens):
            scores[:] = torch.finfo(scores.dtype).min
            scores[:, self.tokens[step]] = 0.0
        return scores


def test_generate_finishes_an_answer_the_model_began_as_the_edit_writes_it(char_tokenizer):
    edit = Edit(prompt="{} is a citizen of", subject="Ellie Kemper", target="Zagreb Republic")
    query = "Which country is Ellie Kemper a citizen of?"

    def answer(copy_after: int) -> str:
        model = CounterfactualModel(
            make_tiny_llama(char_tokenizer, seed=1),
            char_tokenizer,
            CounterfactualConfig(copy_answer_after=copy_after),
        )
        start = len(model._tokenize_inputs([model.format_input(edit, query)])["input_ids"][0])
        begin = char_tokenizer(" Za", add_special_tokens=False)["input_ids"]
        # The caller's processor writes " Za"; the edit's answer is copied from there on.
        return model.generate(
            [edit], [query], max_new_tokens=20, logits_processor=[ForceFirst(begin, start)]
        )[0]

    assert answer(2).startswith("Zagreb Republic")
    assert not answer(0).startswith("Zagreb")  # the tiny random model does not write it by itself


def test_an_answer_written_either_way_is_followed_from_the_writing_begun():
    capitalized = [9, 6, 7, 8]
    assert scores_after([9, 6], answers=([ANSWER, capitalized],))[0].argmax().item() == 7
    assert scores_after([5, 6, 7], answers=([ANSWER, capitalized],))[0].argmax().item() == 8
    assert torch.equal(scores_after([9, 5], answers=([ANSWER, capitalized],)), torch.zeros(1, 12))


def test_the_model_lists_its_answers_writings(char_tokenizer):
    model = CounterfactualModel(make_tiny_llama(char_tokenizer, seed=1), char_tokenizer)
    ids = lambda text: char_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert model._answer_writings(" mezzo-soprano ") == [ids(" mezzo-soprano"), ids(" Mezzo-soprano")]
    assert model._answer_writings("Croatia") == [ids(" Croatia")]
    assert model._answer_writings("  ") is None and model._answer_writings(None) is None
