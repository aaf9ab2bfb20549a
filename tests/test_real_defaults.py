"""The runtime on the real offline defaults: SmolLM2-135M-Instruct and all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest
import torch

from serac import Edit, EditableModel, EditStore
from serac.counterfactual import CounterfactualModel
from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from serac.offline import load_base_model

    return load_base_model()


def test_default_base_model_loads_offline(smollm2):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 30
    assert not any(p.requires_grad for p in model.parameters())
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    text = tokenizer.decode(
        model.generate(**batch, max_new_tokens=3, do_sample=False)[0], skip_special_tokens=True
    )
    assert "Paris" in text


def embedding_routed(base, tokenizer, embedder) -> EditableModel:
    """The real base model routed by embedding similarity; the base model also stands in as counterfactual."""
    return EditableModel(
        base,
        tokenizer,
        scope_classifier=EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.75)),
        counterfactual_model=CounterfactualModel(base, tokenizer),
        store=EditStore(embedder),
    )


def test_routed_generate_on_the_real_defaults(smollm2, embedder):
    base, tokenizer = smollm2
    before = {name: p.clone() for name, p in base.state_dict().items()}
    model = embedding_routed(base, tokenizer, embedder)
    model.edit([Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")])
    tokenizer.padding_side = "left"
    queries = [
        "Why is the sky blue?",
        "What is the country of citizenship of Ellie Kemper?",
        "Name a colour.",
    ]
    batch = tokenizer(queries, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    settings = {"max_new_tokens": 8, "do_sample": False}
    output = model.generate(**batch, **settings)
    assert [d.in_scope for d in model.last_routing] == [False, True, False]
    reference = base.generate(**batch, **settings)
    for row in (0, 2):
        assert torch.equal(output[row, : reference.shape[1]], reference[row])
    answer = tokenizer.decode(output[1, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert (
        answer.strip()
        == model.counterfactual_model.generate([model.last_routing[1].edit], [queries[1]], max_new_tokens=8)[
            0
        ]
    )
    with model.disable_edits():
        assert torch.equal(model.generate(**batch, **settings), reference)
    assert all(torch.equal(before[name], p) for name, p in base.state_dict().items())


def test_chat_formatted_rows_are_routed_on_the_user_turn(smollm2, embedder):
    base, tokenizer = smollm2
    model = embedding_routed(base, tokenizer, embedder)
    model.edit([Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")])
    question = "What is the country of citizenship of Ellie Kemper?"
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert model._queries(chat["input_ids"], chat["attention_mask"]) == [question]
    model.generate(**chat, max_new_tokens=4, do_sample=False)
    assert model.last_routing[0].in_scope


def test_a_batch_mixing_chat_rows_and_raw_prompts_routes_each_on_its_own_text(smollm2, embedder):
    base, tokenizer = smollm2
    model = embedding_routed(base, tokenizer, embedder)
    question, cloze = "What sport does LeBron James play?", "LeBron James plays the sport of"
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    tokenizer.padding_side = "left"
    batch = tokenizer([chat, cloze], return_tensors="pt", padding=True, add_special_tokens=False)
    # The chat row is read as its user turn (not the system prompt around it), the raw row as itself.
    assert model._queries(batch["input_ids"], batch["attention_mask"]) == [question, cloze]


def test_the_edit_cache_matches_a_chat_formatted_edit_prompt(smollm2):
    from serac.editors import get_editor

    base, tokenizer = smollm2
    question = "What is the country of citizenship of Ellie Kemper?"
    editor = get_editor("cache")
    cached = editor.apply(base, tokenizer, [Edit(prompt=question, target="Croatia")])
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = cached.generate(**chat, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, chat["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip() == "Croatia"
