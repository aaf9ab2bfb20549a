"""The edit route answers as the base route does: cut at max_tokens with "length", sampled with the caller's
settings, and counting the prompt the same way."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")

from serac.counterfactual import CounterfactualModel  # noqa: E402

from .conftest import make_tiny_llama  # noqa: E402
from .test_serve import (  # noqa: E402
    ADMIN,
    CITIZEN,
    KEY,
    chat,
    chat_tokenizer,  # noqa: F401  (module fixtures used here)
    local_app,
    make_router,
    post_edits,
    serving,
)


class BudgetedCounterfactualModel(CounterfactualModel):
    """Answers with the edit's target, written one character (one token) at a time up to its budget, as a
    real model stops at ``max_new_tokens``; records the settings each call got."""

    calls: list[dict]

    def generate(self, edits, queries, **generation_kwargs):
        self.calls.append(dict(generation_kwargs))
        budget = generation_kwargs.get("max_new_tokens", self.config.max_new_tokens)
        return [edit.target[:budget] for edit in edits]


@pytest.fixture(scope="module")
def budgeted_server(chat_tokenizer, embedder):  # noqa: F811
    base_model = make_tiny_llama(chat_tokenizer, seed=0)
    counterfactual = BudgetedCounterfactualModel(make_tiny_llama(chat_tokenizer, seed=3), chat_tokenizer)
    counterfactual.calls = []
    router = make_router(embedder, counterfactual, chat_tokenizer)
    app = local_app(base_model, chat_tokenizer, router, admin_token=ADMIN, api_keys=(KEY,))
    with serving(app) as url:
        post_edits(url, [CITIZEN])
        yield url, counterfactual


def test_an_edited_answer_cut_by_max_tokens_ends_with_length(budgeted_server):
    url, _ = budgeted_server
    cut = chat(url, CITIZEN["prompt"], max_tokens=3, temperature=0).choices[0]
    assert (cut.message.content, cut.finish_reason) == ("Cro", "length")
    whole = chat(url, CITIZEN["prompt"], max_tokens=7, temperature=0).choices[0]
    assert (whole.message.content, whole.finish_reason) == ("Croatia", "stop")


def test_an_edited_answer_samples_with_the_callers_settings(budgeted_server):
    url, counterfactual = budgeted_server
    counterfactual.calls.clear()
    chat(url, CITIZEN["prompt"], max_tokens=8, temperature=0.7, top_p=0.9)
    chat(url, CITIZEN["prompt"], max_tokens=8, temperature=0)
    sampled, greedy = counterfactual.calls
    assert (sampled["do_sample"], sampled["temperature"], sampled["top_p"]) == (True, 0.7, 0.9)
    assert greedy["do_sample"] is False


def test_prompt_tokens_count_the_templated_prompt_on_both_routes(budgeted_server, chat_tokenizer):  # noqa: F811
    url, _ = budgeted_server
    messages = [{"role": "user", "content": CITIZEN["prompt"]}]
    templated = chat_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = len(chat_tokenizer(templated, add_special_tokens=False)["input_ids"])
    edited = chat(url, CITIZEN["prompt"], max_tokens=8, temperature=0)
    assert edited.serac["route"] == "edit"
    assert edited.usage.prompt_tokens == expected
    unrelated = "Why is the sky blue?"
    base = chat(url, unrelated, max_tokens=4, temperature=0)
    assert base.serac["route"] == "base_model"
    unrelated_templated = chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": unrelated}], tokenize=False, add_generation_prompt=True
    )
    assert base.usage.prompt_tokens == len(
        chat_tokenizer(unrelated_templated, add_special_tokens=False)["input_ids"]
    )


def test_a_chat_is_routed_by_its_conversation(budgeted_server):
    from .test_serve import SPORT, client

    url, _ = budgeted_server
    (sport_id,) = post_edits(url, [SPORT]).json()["ids"]
    messages = [
        {"role": "user", "content": "Tell me about LeBron James."},
        {"role": "assistant", "content": "He is a basketball player."},
        {"role": "user", "content": "Which sport does he play?"},
    ]
    answer = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert (answer.serac["route"], answer.serac["edit_id"]) == ("edit", sport_id)
    assert (answer.serac["query"], answer.serac["turn"]) == ("Which sport does LeBron James play?", 2)
    assert answer.choices[0].message.content == "football"
    # The last message alone names no one: out of scope, and nothing is reported as completed.
    alone = client(url).chat.completions.create(
        model="tiny", messages=messages[-1:], max_tokens=4, temperature=0
    )
    assert alone.serac["route"] == "base_model" and "query" not in alone.serac
