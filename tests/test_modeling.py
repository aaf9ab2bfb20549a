"""Invariants of the routed drop-in generate()."""

from __future__ import annotations

import threading

import pytest
import torch

from serac import Edit
from serac.counterfactual import CounterfactualModel
from serac.modeling import EditableModel
from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig
from serac.store import EditStore, EditStoreError

from .conftest import make_tiny_t5

CITIZEN = Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")
SPORT = Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")
QUERIES = [
    "Why is the sky blue?",
    "What is the country of citizenship of Ellie Kemper?",
    "Name a prime number.",
]
GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="session")
def counterfactual(char_tokenizer):
    return CounterfactualModel(make_tiny_t5(char_tokenizer, seed=2), char_tokenizer)


def make_editor(base, tokenizer, counterfactual, embedder, threshold=0.6):
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=threshold, top_k=2))
    return EditableModel(
        base,
        tokenizer,
        scope_classifier=scope,
        counterfactual_model=counterfactual,
        store=EditStore(embedder),
    )


def batch(tokenizer, texts, side="left"):
    tokenizer.padding_side = side
    try:
        return tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"


def weights(model):
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


@pytest.fixture(params=["decoder_only", "seq2seq"])
def base(request, tiny_llama, tiny_t5):
    return tiny_llama if request.param == "decoder_only" else tiny_t5


@pytest.mark.parametrize("side", ["left", "right"])
def test_empty_store_is_token_for_token_the_base_model(base, char_tokenizer, counterfactual, embedder, side):
    model = make_editor(base, char_tokenizer, counterfactual, embedder)
    inputs = batch(char_tokenizer, QUERIES, side)
    assert torch.equal(model.generate(**inputs, **GREEDY), base.generate(**inputs, **GREEDY))
    assert [d.in_scope for d in model.last_routing] == [False, False, False]


def test_no_row_in_scope_is_token_for_token_the_base_model(base, char_tokenizer, counterfactual, embedder):
    model = make_editor(base, char_tokenizer, counterfactual, embedder)
    model.edit([SPORT])
    inputs = batch(char_tokenizer, ["Why is the sky blue?", "Name a prime number."])
    assert torch.equal(model.generate(**inputs, **GREEDY), base.generate(**inputs, **GREEDY))
    assert not any(d.in_scope for d in model.last_routing)
    assert all(d.score is None or d.score < 0.6 for d in model.last_routing)


def test_mixed_batch_routes_each_row_and_keeps_order(base, char_tokenizer, counterfactual, embedder):
    model = make_editor(base, char_tokenizer, counterfactual, embedder)
    (citizen_id,) = model.edit([CITIZEN])
    inputs = batch(char_tokenizer, QUERIES)
    output = model.generate(**inputs, **GREEDY)
    routing = model.last_routing
    assert [d.in_scope for d in routing] == [False, True, False]
    assert routing[1].edit_id == citizen_id and routing[1].edit == CITIZEN

    reference = base.generate(**inputs, **GREEDY)
    pad = char_tokenizer.pad_token_id
    for row in (0, 2):  # out-of-scope rows: the base model's own output, right-padded
        width = reference.shape[1]
        assert torch.equal(output[row, :width], reference[row])
        assert torch.all(output[row, width:] == pad)

    answer = counterfactual.generate([CITIZEN], [QUERIES[1]], max_new_tokens=6)[0]
    # A raw prompt is continued after a space; a seq2seq answer starts fresh after the decoder start token.
    space = "" if base.config.is_encoder_decoder else " "
    answer_ids = char_tokenizer(space + answer, add_special_tokens=False)["input_ids"]
    expected_new = (answer_ids + [char_tokenizer.eos_token_id])[:6]
    if base.config.is_encoder_decoder:
        prefix = [base.generation_config.decoder_start_token_id]
    else:
        prefix = inputs["input_ids"][1].tolist()
    row = output[1].tolist()
    assert row[: len(prefix) + len(expected_new)] == prefix + expected_new
    assert all(token == pad for token in row[len(prefix) + len(expected_new) :])


def test_routing_does_not_depend_on_batch_composition(char_tokenizer, tiny_llama, counterfactual, embedder):
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    model.edit([CITIZEN, SPORT])
    together = model.route(QUERIES + ["LeBron James plays the sport of"])
    alone = [model.route([query])[0] for query in QUERIES + ["LeBron James plays the sport of"]]
    assert [(d.in_scope, d.edit_id) for d in together] == [(d.in_scope, d.edit_id) for d in alone]
    assert [d.in_scope for d in together] == [False, True, False, True]
    for a, b in zip(together, alone, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_disable_edits_gives_the_base_model(char_tokenizer, tiny_llama, counterfactual, embedder):
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    model.edit([CITIZEN])
    inputs = batch(char_tokenizer, QUERIES)
    with model.disable_edits():
        assert torch.equal(model.generate(**inputs, **GREEDY), tiny_llama.generate(**inputs, **GREEDY))
    assert model.last_routing[1].in_scope is False
    model.generate(**inputs, **GREEDY)
    assert model.last_routing[1].in_scope is True


def test_return_dict_and_num_return_sequences(char_tokenizer, tiny_llama, counterfactual, embedder):
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    model.edit([CITIZEN])
    inputs = batch(char_tokenizer, QUERIES)
    output = model.generate(**inputs, **GREEDY, return_dict_in_generate=True)
    reference = tiny_llama.generate(**inputs, **GREEDY, return_dict_in_generate=True)
    assert type(output) is type(reference)
    assert output.sequences.shape[0] == 3
    beams = model.generate(**inputs, max_new_tokens=4, num_beams=2, num_return_sequences=2)
    assert beams.shape[0] == 6
    assert torch.equal(beams[2], beams[3])  # the edited row's answer is given for both of its sequences
    plain = tiny_llama.generate(**inputs, max_new_tokens=4, num_beams=2, num_return_sequences=2)
    assert torch.equal(beams[0, : plain.shape[1]], plain[0])


def test_base_weights_are_bit_identical_after_edits_saves_and_loads(
    base, char_tokenizer, counterfactual, embedder, tmp_path
):
    before = weights(base)
    model = make_editor(base, char_tokenizer, counterfactual, embedder)
    ids = model.edit([CITIZEN, SPORT])
    model.generate(**batch(char_tokenizer, QUERIES), **GREEDY)
    model.remove_edits(ids[:1])
    model.save_pretrained(tmp_path / "editor")
    reloaded = EditableModel.from_pretrained(
        base, tmp_path / "editor", tokenizer=char_tokenizer, embedder=embedder
    )
    reloaded.generate(**batch(char_tokenizer, QUERIES), **GREEDY)
    after = weights(base)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_save_and_load_give_the_same_edits_ids_and_outputs(
    char_tokenizer, tiny_llama, counterfactual, embedder, tmp_path
):
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    ids = model.edit([CITIZEN, SPORT, Edit.from_statement("Boris Johnson is the prime minister of the UK.")])
    model.remove_edits([ids[1]])
    inputs = batch(char_tokenizer, QUERIES)
    expected = model.generate(**inputs, **GREEDY)
    model.save_pretrained(tmp_path / "editor")
    assert not (tmp_path / "editor" / "model.safetensors").exists()  # the base model is never copied
    reloaded = EditableModel.from_pretrained(
        tiny_llama, tmp_path / "editor", tokenizer=char_tokenizer, embedder=embedder
    )
    assert reloaded.edits == model.edits
    assert torch.equal(reloaded.generate(**inputs, **GREEDY), expected)
    assert [(d.in_scope, d.edit_id) for d in reloaded.last_routing] == [
        (d.in_scope, d.edit_id) for d in model.last_routing
    ]
    # Saving again over the same directory replaces it whole.
    reloaded.remove_edits([ids[0]])
    reloaded.save_pretrained(tmp_path / "editor")
    again = EditableModel.from_pretrained(
        tiny_llama, tmp_path / "editor", tokenizer=char_tokenizer, embedder=embedder
    )
    assert [edit_id for edit_id, _ in again.edits] == [ids[2]]


def test_bad_inputs_raise_and_change_nothing(char_tokenizer, tiny_llama, counterfactual, embedder, tmp_path):
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    ids = model.edit([CITIZEN])
    inputs = batch(char_tokenizer, QUERIES)
    with pytest.raises(TypeError):
        model.generate(input_ids=inputs["input_ids"].tolist())
    with pytest.raises(ValueError):
        model.generate(input_ids=inputs["input_ids"][0])
    with pytest.raises(TypeError):
        model.generate(input_ids=inputs["input_ids"].float())
    with pytest.raises(ValueError):
        model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"][:, :-1])
    with pytest.raises(KeyError):
        model.remove_edits([ids[0], 12345])
    with pytest.raises(TypeError):
        model.edit(["Ellie Kemper is Croatian"])
    with pytest.raises(ValueError):
        model.edit([Edit(prompt="Who?", target="x"), Edit(prompt="", target="y")])
    assert model.edits == [(ids[0], CITIZEN)]
    with pytest.raises(TypeError):
        EditableModel(
            tiny_llama, char_tokenizer, scope_classifier="nope", counterfactual_model=counterfactual
        )
    model.save_pretrained(tmp_path / "editor")
    store_file = tmp_path / "editor" / "edit_store.safetensors"
    store_file.write_bytes(store_file.read_bytes()[:100])
    with pytest.raises(EditStoreError):
        EditableModel.from_pretrained(
            tiny_llama, tmp_path / "editor", tokenizer=char_tokenizer, embedder=embedder
        )
    with pytest.raises(FileNotFoundError):
        EditableModel.from_pretrained(tiny_llama, tmp_path / "nothing", tokenizer=char_tokenizer)


def test_unknown_attributes_are_forwarded_to_the_base_model(
    char_tokenizer, tiny_llama, counterfactual, embedder
):
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    assert model.config is tiny_llama.config
    assert model.device == tiny_llama.device
    with pytest.raises(AttributeError):
        model.no_such_attribute  # noqa: B018


def test_edits_from_another_thread_while_generating(char_tokenizer, tiny_llama, counterfactual, embedder):
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    model.edit([CITIZEN])
    inputs = batch(char_tokenizer, QUERIES)
    stop = threading.Event()
    errors = []

    def editor_thread():
        try:
            i = 0
            while not stop.is_set():
                ids = model.edit([Edit(prompt=f"Who founded company {i}?", target=f"founder {i}"), SPORT])
                model.remove_edits([ids[0]])
                i += 1
        except Exception as error:  # pragma: no cover - reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=editor_thread)
    thread.start()
    try:
        for _ in range(8):
            output = model.generate(**inputs, **GREEDY)
            routing = model.last_routing
            assert output.shape[0] == 3
            assert [d.in_scope for d in routing] == [False, True, False]
            assert routing[1].edit == CITIZEN
    finally:
        stop.set()
        thread.join()
    assert not errors
