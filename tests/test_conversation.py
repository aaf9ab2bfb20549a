"""Routing that reads the conversation: the last user turn with the turns before it."""

from __future__ import annotations

import pytest
import torch

from serac import Edit
from serac.chat import chat_markers, chat_turns
from serac.conversation import Turn, routing_query
from serac.counterfactual import CounterfactualModel
from serac.modeling import EditableModel
from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig
from serac.store import EditStore

from .conftest import make_char_tokenizer, make_tiny_llama, make_tiny_t5

# Turns end with "|": the character tokenizer has no newline, and every marker must survive decoding.
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}|{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
CITIZEN = Edit(prompt="{} is a citizen of", subject="Ellie Kemper", target="Croatia")


def user(text):
    return Turn("user", text)


def assistant(text):
    return Turn("assistant", text)


def test_a_pronoun_is_read_with_the_entity_named_earlier():
    found = routing_query(
        [
            user("I'm reading about Ellie Kemper."),
            assistant("She is an actress."),
            user("Which country is she a citizen of?"),
        ]
    )
    assert (found.text, found.turn, found.entity, found.entity_turn) == (
        "Which country is Ellie Kemper a citizen of?",
        2,
        "Ellie Kemper",
        0,
    )
    possessive = routing_query([user("Tell me about LeBron James."), user("What is his sport?")])
    assert possessive.text == "What is LeBron James's sport?"


def test_a_follow_up_without_a_question_is_routed_by_the_question_it_follows():
    found = routing_query(
        [
            user("Which country is Ellie Kemper a citizen of?"),
            assistant("Croatia."),
            user("Please answer in one word."),
        ]
    )
    assert (found.text, found.turn, found.entity) == ("Which country is Ellie Kemper a citizen of?", 0, None)
    # A question about "her" after an instruction turn: both steps.
    both = routing_query(
        [user("Tell me about Ellie Kemper."), user("Where is she a citizen?"), user("Be brief.")]
    )
    assert (both.text, both.turn) == ("Where is Ellie Kemper a citizen?", 1)


def test_a_turn_that_stands_alone_is_routed_as_it_is():
    conversation = [user("Tell me about Ellie Kemper."), assistant("She is an actress.")]
    for question in ("What is the capital of France?", "Which country is Ellie Kemper a citizen of?", "Why?"):
        found = routing_query([*conversation, user(question)])
        assert (found.text, found.turn, found.entity) == (question, 2, None)


def test_subjects_of_stored_edits_win_over_other_names_and_system_prompts_are_not_read(embedder):
    store = EditStore(embedder)
    store.add([CITIZEN])
    conversation = [
        Turn("system", "You are Smol, made by Hugging Face."),
        user("Ellie Kemper starred with Steve Carell in a show."),
        assistant("Yes, The Office."),
        user("Which country is she a citizen of?"),
    ]
    assert routing_query(conversation, store).entity == "Ellie Kemper"
    assert routing_query(conversation).entity == "Steve Carell"  # without the store: the latest user name
    alone = routing_query(
        [Turn("system", "You are Smol, made by Hugging Face."), user("Where was she born?")]
    )
    assert (alone.text, alone.entity) == ("Where was she born?", None)


def test_conversation_needs_a_user_turn():
    with pytest.raises(ValueError, match="user turn"):
        routing_query([assistant("Hello.")])


def test_chat_turns_reads_every_turn_of_a_rendered_template():
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I'm reading about Ellie Kemper."},
        {"role": "assistant", "content": "She is an actress."},
        {"role": "user", "content": "Which country is she a citizen of?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = chat_turns(text, *chat_markers(tokenizer))
    assert [turn["role"] for turn in turns] == ["system", "user", "assistant", "user"]
    assert [turn["content"] for turn in turns if turn["role"] == "user"] == [
        "I'm reading about Ellie Kemper.",
        "Which country is she a citizen of?",
    ]
    assert chat_turns("no chat markers here", *chat_markers(tokenizer)) is None


@pytest.fixture(scope="module")
def chat_model(embedder):
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.75, top_k=2))
    counterfactual = CounterfactualModel(make_tiny_t5(tokenizer, seed=2), tokenizer)
    model = EditableModel(
        make_tiny_llama(tokenizer), tokenizer, scope_classifier=scope, counterfactual_model=counterfactual,
        store=EditStore(embedder),
    )  # fmt: skip
    (edit_id,) = model.edit([CITIZEN])
    return model, edit_id


def routed(model, messages):
    tokenizer = model.tokenizer
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with model.trace_routing() as calls:
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
    (decision,) = calls[0]
    return decision


def test_generate_routes_a_chat_by_its_conversation(chat_model):
    model, edit_id = chat_model
    follow_up = [
        {"role": "user", "content": "I'm reading about Ellie Kemper."},
        {"role": "assistant", "content": "She is an actress."},
        {"role": "user", "content": "Which country is she a citizen of?"},
    ]
    decision = routed(model, follow_up)
    assert (decision.in_scope, decision.edit_id, decision.turn) == (True, edit_id, 2)
    assert decision.query == "Which country is Ellie Kemper a citizen of?"
    # Without the earlier turn nothing says who "she" is: out of scope.
    assert not routed(model, follow_up[-1:]).in_scope
    # A new topic after the edited subject stays out of scope.
    new_topic = [*follow_up[:2], {"role": "user", "content": "How do bees make honey?"}]
    assert not routed(model, new_topic).in_scope
    # The question first, an instruction last.
    instruction = [
        {"role": "user", "content": "Which country is Ellie Kemper a citizen of?"},
        {"role": "assistant", "content": "The United States."},
        {"role": "user", "content": "Please answer in one word."},
    ]
    decision = routed(model, instruction)
    assert (decision.in_scope, decision.edit_id, decision.turn) == (True, edit_id, 0)


def test_a_raw_prompt_is_still_routed_by_its_text(chat_model):
    model, edit_id = chat_model
    inputs = model.tokenizer(["Ellie Kemper is a citizen of"], return_tensors="pt")
    with model.trace_routing() as calls:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert calls[0][0].in_scope and calls[0][0].query is None and calls[0][0].turn is None
    assert torch.is_tensor(inputs["input_ids"])


def test_a_plain_prompt_of_several_sentences_is_read_the_same_way():
    from serac.conversation import routing_query_of_text

    found = routing_query_of_text("I'm reading about Ellie Kemper. Which country is she a citizen of?")
    assert (found.text, found.turn, found.entity) == (
        "Which country is Ellie Kemper a citizen of?",
        1,
        "Ellie Kemper",
    )
    follow_up = routing_query_of_text(
        "What is the country of citizenship of Ellie Kemper? Please answer in one word."
    )
    assert (follow_up.text, follow_up.turn) == ("What is the country of citizenship of Ellie Kemper?", 0)
    # Routed as they are: one sentence, a last sentence that stands alone, a cloze after unrelated context.
    for text in (
        "Ellie Kemper is a citizen of",
        "The weather is nice. Which country is Ellie Kemper a citizen of?",
        "Who is she? Ellie Kemper is a citizen of",
    ):
        assert routing_query_of_text(text) is None
