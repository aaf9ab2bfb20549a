"""EditableModel as a drop-in: a catalogue of everyday calls against a tiny decoder-only and a tiny seq2seq base.

Every catalogue call ends in one of three outcomes, named in its test id:

* ``identical``: no row is in scope, and the output equals the base model's for the same call;
* ``edited``: a row is in scope, its output is the counterfactual model's answer written the way the base
  model writes (prompt, answer, end of sequence; lengths and padding as the call asks), and every other row
  equals the base model's output for the same call;
* ``error``: the call raises a clear error (the base model's own, or one saying why edits cannot apply).

Count them with ``python -m pytest tests/test_dropin.py -q -k catalogue -rA | grep PASSED``.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass

import pytest
import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextStreamer

from serac import Edit
from serac.counterfactual import CounterfactualModel
from serac.modeling import EditableModel
from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig
from serac.store import EditStore

from .conftest import make_char_tokenizer, make_tiny_llama, make_tiny_t5

CITIZEN = Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")
IN_SCOPE = CITIZEN.prompt
OUT = ["Why is the sky blue?", "Name a prime number."]
MIXED = ["Why is the sky blue?", IN_SCOPE, "Name a prime number."]
EDITED_ROW = 1
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


# ---------------------------------------------------------------------------------------------- fixtures
@dataclass
class Setup:
    """One base model wrapped with an embedding-routed scope classifier (real MiniLM) and one edit."""

    kind: str
    base: torch.nn.Module
    tokenizer: object
    counterfactual: CounterfactualModel
    model: EditableModel
    embedder: object

    @property
    def seq2seq(self) -> bool:
        return self.kind == "seq2seq"


def make_setup(kind: str, tokenizer, embedder, *, seed: int = 0) -> Setup:
    base = (
        make_tiny_llama(tokenizer, seed=seed) if kind == "decoder_only" else make_tiny_t5(tokenizer, seed=1)
    )
    counterfactual = CounterfactualModel(make_tiny_t5(tokenizer, seed=2), tokenizer)
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))
    model = EditableModel(
        base,
        tokenizer,
        scope_classifier=scope,
        counterfactual_model=counterfactual,
        store=EditStore(embedder),
    )
    model.edit([CITIZEN])
    return Setup(kind, base, tokenizer, counterfactual, model, embedder)


@pytest.fixture(scope="module")
def setups(char_tokenizer, embedder) -> dict[str, Setup]:
    return {kind: make_setup(kind, char_tokenizer, embedder) for kind in ("decoder_only", "seq2seq")}


def encode(tokenizer, texts: list[str], side: str = "left") -> dict[str, torch.Tensor]:
    # Padding side as a call argument: the shared tokenizer is never mutated.
    return dict(tokenizer(texts, return_tensors="pt", padding=True, padding_side=side))


def trimmed(row: torch.Tensor, pad: int) -> list[int]:
    """A generated row without its trailing padding."""
    values = row.tolist()
    while values and values[-1] == pad:
        values.pop()
    return values


def assert_rows_equal(output: torch.Tensor, reference: torch.Tensor, rows, pad: int, ref_rows=None) -> None:
    for index, row in enumerate(rows):
        ref = row if ref_rows is None else ref_rows[index]
        assert trimmed(output[row], pad) == trimmed(reference[ref], pad), f"row {row}"


def expected_new_tokens(setup: Setup, query: str, budget: int, *, answer: str | None = None, chat=False):
    """The tokens an edited row must get after its prompt: the answer (as the base writes it), then eos."""
    if answer is None:
        answer = setup.counterfactual.generate([CITIZEN], [query], max_new_tokens=budget)[0]
    space = "" if (setup.seq2seq or chat) else " "
    tokens = setup.tokenizer(space + answer, add_special_tokens=False)["input_ids"]
    return (tokens + [setup.tokenizer.eos_token_id])[:budget]


def assert_edited_row(setup: Setup, output_row: torch.Tensor, prompt_ids: list[int], new: list[int]) -> None:
    prefix = [setup.base.generation_config.decoder_start_token_id] if setup.seq2seq else prompt_ids
    assert trimmed(output_row, setup.tokenizer.pad_token_id) == prefix + new


# ---------------------------------------------------------------------------------------------- catalogue
@dataclass(frozen=True)
class Call:
    """One everyday call: ``run(setup)`` asserts its outcome (``identical``, ``edited`` or ``error``)."""

    name: str
    outcome: str
    run: Callable[[Setup], None]
    kinds: tuple[str, ...] = ("decoder_only", "seq2seq")


def greedy(setup: Setup, texts: list[str], **kwargs) -> tuple[torch.Tensor, torch.Tensor, dict]:
    inputs = encode(setup.tokenizer, texts)
    kwargs.setdefault("max_new_tokens", 6)
    kwargs.setdefault("do_sample", False)
    return setup.model.generate(**inputs, **kwargs), setup.base.generate(**inputs, **kwargs), inputs


def prompt_of(inputs, row: int) -> list[int]:
    return inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()


def check_identical(setup: Setup, texts: list[str], **kwargs) -> None:
    output, reference, _ = greedy(setup, texts, **kwargs)
    assert torch.equal(output, reference)
    assert not any(decision.in_scope for decision in setup.model.last_routing)


def check_mixed(setup: Setup, budget: int = 6, **kwargs) -> None:
    output, reference, inputs = greedy(setup, MIXED, **kwargs)
    pad = setup.tokenizer.pad_token_id
    assert [d.in_scope for d in setup.model.last_routing] == [False, True, False]
    assert_rows_equal(output, reference, [0, 2], pad)
    # The edited row starts where every row starts: after the (left-padded) prompt of the batch.
    new = expected_new_tokens(setup, IN_SCOPE, budget)
    padded_prompt = inputs["input_ids"][EDITED_ROW].tolist()
    assert_edited_row(setup, output[EDITED_ROW], padded_prompt, new)


def call_greedy_out(setup):
    check_identical(setup, OUT)


def call_greedy_mixed(setup):
    check_mixed(setup)


def call_right_padding_out(setup):
    inputs = encode(setup.tokenizer, OUT, side="right")
    args = {"max_new_tokens": 4, "do_sample": False}
    assert torch.equal(setup.model.generate(**inputs, **args), setup.base.generate(**inputs, **args))


def call_positional_single_row_in_scope(setup):
    ids = setup.tokenizer([IN_SCOPE], return_tensors="pt")["input_ids"]
    output = setup.model.generate(ids, max_new_tokens=6, do_sample=False)
    assert_edited_row(setup, output[0], ids[0].tolist(), expected_new_tokens(setup, IN_SCOPE, 6))


def call_max_length(setup):
    inputs = encode(setup.tokenizer, MIXED)
    width = inputs["input_ids"].shape[1]
    max_length = 4 if setup.seq2seq else width + 3  # three new tokens either way
    output = setup.model.generate(**inputs, max_length=max_length, do_sample=False)
    reference = setup.base.generate(**inputs, max_length=max_length, do_sample=False)
    assert output.shape[1] <= max_length
    assert_rows_equal(output, reference, [0, 2], setup.tokenizer.pad_token_id)
    new = expected_new_tokens(setup, IN_SCOPE, 3)
    assert_edited_row(setup, output[EDITED_ROW], inputs["input_ids"][EDITED_ROW].tolist(), new)


def call_generation_config(setup):
    config = GenerationConfig(max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=1)
    inputs = encode(setup.tokenizer, MIXED)
    output = setup.model.generate(**inputs, generation_config=config)
    reference = setup.base.generate(**inputs, generation_config=config)
    assert_rows_equal(output, reference, [0, 2], 0)
    new = expected_new_tokens(setup, IN_SCOPE, 3)
    assert_edited_row(setup, output[EDITED_ROW], inputs["input_ids"][EDITED_ROW].tolist(), new)


def call_max_new_tokens_zero_out(setup):
    inputs = encode(setup.tokenizer, OUT)
    with pytest.raises(ValueError):
        setup.base.generate(**inputs, max_new_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        setup.model.generate(**inputs, max_new_tokens=0)


def call_max_new_tokens_zero_mixed(setup):
    with pytest.raises(ValueError, match="max_new_tokens"):
        setup.model.generate(**encode(setup.tokenizer, MIXED), max_new_tokens=0)


class StopAfter(StoppingCriteria):
    """Stops every row once ``count`` tokens were generated."""

    def __init__(self, count: int) -> None:
        self.count, self.start = count, None

    def __call__(self, input_ids, scores, **kwargs):
        self.start = self.start if self.start is not None else input_ids.shape[1] - 1
        done = input_ids.shape[1] - self.start >= self.count
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def call_stopping_criteria(setup):
    inputs = encode(setup.tokenizer, MIXED)
    output = setup.model.generate(
        **inputs, max_new_tokens=8, do_sample=False, stopping_criteria=StoppingCriteriaList([StopAfter(2)])
    )
    reference = setup.base.generate(
        **inputs, max_new_tokens=8, do_sample=False, stopping_criteria=StoppingCriteriaList([StopAfter(2)])
    )
    assert output.shape == reference.shape
    assert_rows_equal(output, reference, [0, 2], setup.tokenizer.pad_token_id)
    new = expected_new_tokens(setup, IN_SCOPE, 8)[:2]
    assert_edited_row(setup, output[EDITED_ROW], inputs["input_ids"][EDITED_ROW].tolist(), new)


def call_text_streamer(setup):
    inputs = encode(setup.tokenizer, [IN_SCOPE])
    printed = io.StringIO()
    streamer = TextStreamer(setup.tokenizer, skip_prompt=True, skip_special_tokens=True)
    with redirect_stdout(printed):
        setup.model.generate(**inputs, max_new_tokens=8, do_sample=False, streamer=streamer)
    new = expected_new_tokens(setup, IN_SCOPE, 8)
    assert printed.getvalue().strip() == setup.tokenizer.decode(new, skip_special_tokens=True).strip()
    assert printed.getvalue().strip()


def call_sampling(setup):
    inputs = encode(setup.tokenizer, MIXED)
    args = {"do_sample": True, "temperature": 1.5, "top_k": 50, "top_p": 1.0, "num_return_sequences": 2}
    torch.manual_seed(0)
    output = setup.model.generate(**inputs, max_new_tokens=6, **args)
    torch.manual_seed(0)
    reference = setup.base.generate(**inputs, max_new_tokens=6, **args)
    # Unedited rows draw exactly what the base model draws under the same seed.
    assert_rows_equal(output, reference, [0, 1, 4, 5], setup.tokenizer.pad_token_id)
    torch.manual_seed(0)
    answers = setup.counterfactual.generate([CITIZEN], [IN_SCOPE], max_new_tokens=6, **args)
    assert answers[0] != answers[1]  # each returned sequence gets its own sample
    for copy, answer in enumerate(answers):
        new = expected_new_tokens(setup, IN_SCOPE, 6, answer=answer)
        assert_edited_row(setup, output[2 + copy], inputs["input_ids"][EDITED_ROW].tolist(), new)
    torch.manual_seed(0)
    assert torch.equal(setup.model.generate(**inputs, max_new_tokens=6, **args), output)  # reproducible


def call_beam_search(setup):
    inputs = encode(setup.tokenizer, MIXED)
    args = {"num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 5, "do_sample": False}
    output = setup.model.generate(**inputs, **args)
    reference = setup.base.generate(**inputs, **args)
    assert output.shape[0] == 6
    assert_rows_equal(output, reference, [0, 1, 4, 5], setup.tokenizer.pad_token_id)
    new = expected_new_tokens(setup, IN_SCOPE, 5)
    for row in (2, 3):
        assert_edited_row(setup, output[row], inputs["input_ids"][EDITED_ROW].tolist(), new)


def call_return_dict_out(setup):
    output, reference, _ = greedy(setup, OUT, return_dict_in_generate=True, output_scores=True)
    assert type(output) is type(reference)
    assert torch.equal(output.sequences, reference.sequences)
    assert len(output.scores) == len(reference.scores)
    assert [d.in_scope for d in output.routing] == [False, False]


def call_return_dict_mixed(setup):
    output, reference, inputs = greedy(setup, MIXED, return_dict_in_generate=True, output_scores=True)
    assert type(output) is type(reference)
    assert [d.in_scope for d in output.routing] == [False, True, False]
    assert output.routing[EDITED_ROW].edit == CITIZEN
    assert_rows_equal(output.sequences, reference.sequences, [0, 2], setup.tokenizer.pad_token_id)
    new = expected_new_tokens(setup, IN_SCOPE, 6)
    assert_edited_row(setup, output.sequences[EDITED_ROW], inputs["input_ids"][EDITED_ROW].tolist(), new)
    # The edited row's scores are those of its forced answer.
    assert [int(step[EDITED_ROW].argmax()) for step in output.scores][: len(new)] == new


def embeds_of(setup: Setup, inputs) -> torch.Tensor:
    return setup.base.get_input_embeddings()(inputs["input_ids"]).detach()


def call_inputs_embeds_out(setup):
    inputs = encode(setup.tokenizer, OUT)
    args = {"inputs_embeds": embeds_of(setup, inputs), "attention_mask": inputs["attention_mask"]}
    output = setup.model.generate(**args, max_new_tokens=5, do_sample=False)
    assert torch.equal(output, setup.base.generate(**args, max_new_tokens=5, do_sample=False))


def call_inputs_embeds_mixed(setup):
    inputs = encode(setup.tokenizer, MIXED)
    args = {"inputs_embeds": embeds_of(setup, inputs), "attention_mask": inputs["attention_mask"]}
    output = setup.model.generate(**args, max_new_tokens=5, do_sample=False)
    reference = setup.base.generate(**args, max_new_tokens=5, do_sample=False)
    assert [d.in_scope for d in setup.model.last_routing] == [False, True, False]
    assert_rows_equal(output, reference, [0, 2], setup.tokenizer.pad_token_id)
    new = expected_new_tokens(setup, IN_SCOPE, 5)
    # Generating from embeddings, a decoder-only model returns only the new tokens.
    assert_edited_row(setup, output[EDITED_ROW], [], new)


def call_inputs_embeds_not_tokens(setup):
    from serac.modeling import EditRoutingError

    inputs = encode(setup.tokenizer, MIXED)
    noise = embeds_of(setup, inputs) + 0.5
    with pytest.raises(EditRoutingError, match="inputs_embeds"):
        setup.model.generate(inputs_embeds=noise, attention_mask=inputs["attention_mask"], max_new_tokens=3)


def call_inputs_and_input_ids(setup):
    a = encode(setup.tokenizer, [OUT[0]])["input_ids"]
    b = encode(setup.tokenizer, [IN_SCOPE])["input_ids"]
    with pytest.raises(ValueError):
        setup.base.generate(a, input_ids=b, max_new_tokens=3)
    with pytest.raises(ValueError, match="input_ids"):
        setup.model.generate(a, input_ids=b, max_new_tokens=3)


def call_int32_mixed(setup):
    inputs = encode(setup.tokenizer, MIXED)
    as_int32 = {**inputs, "input_ids": inputs["input_ids"].int()}
    output = setup.model.generate(**as_int32, max_new_tokens=6, do_sample=False)
    assert torch.equal(output, setup.model.generate(**inputs, max_new_tokens=6, do_sample=False))
    assert [d.in_scope for d in setup.model.last_routing] == [False, True, False]


def call_logits_processors_out(setup):
    check_identical(setup, OUT, repetition_penalty=1.3, no_repeat_ngram_size=2)


def call_logits_processors_mixed(setup):
    check_mixed(setup, repetition_penalty=1.3, no_repeat_ngram_size=2)


def call_min_new_tokens_mixed(setup):
    # An edited answer ends where the answer ends; min_new_tokens binds only the base model's rows.
    check_mixed(setup, min_new_tokens=4)


def call_bad_generation_arguments(setup):
    inputs = encode(setup.tokenizer, MIXED)
    bad = {"num_beams": 1, "num_return_sequences": 2, "do_sample": False, "max_new_tokens": 3}
    with pytest.raises(ValueError):
        setup.base.generate(**inputs, **bad)
    with pytest.raises(ValueError):
        setup.model.generate(**inputs, **bad)


def call_disable_edits(setup):
    inputs = encode(setup.tokenizer, MIXED)
    with setup.model.disable_edits():
        output = setup.model.generate(**inputs, max_new_tokens=6, do_sample=False)
        logits = setup.model(**inputs, **decoder_inputs(setup, inputs)).logits
    assert torch.equal(output, setup.base.generate(**inputs, max_new_tokens=6, do_sample=False))
    assert torch.equal(logits, setup.base(**inputs, **decoder_inputs(setup, inputs)).logits)


def call_trace_routing(setup):
    with setup.model.trace_routing() as calls:
        greedy(setup, OUT)
        greedy(setup, MIXED)
    assert [[d.in_scope for d in call] for call in calls] == [[False, False], [False, True, False]]


def decoder_inputs(setup: Setup, inputs) -> dict:
    if not setup.seq2seq:
        return {}
    return {"decoder_input_ids": torch.zeros((inputs["input_ids"].shape[0], 1), dtype=torch.long)}


def call_forward_out(setup):
    inputs = encode(setup.tokenizer, OUT)
    extra = decoder_inputs(setup, inputs)
    output, reference = setup.model(**inputs, **extra), setup.base(**inputs, **extra)
    assert type(output) is type(reference)
    assert torch.equal(output.logits, reference.logits)


def call_forward_mixed(setup):
    inputs = encode(setup.tokenizer, MIXED)
    extra = decoder_inputs(setup, inputs)
    output, reference = setup.model(**inputs, **extra), setup.base(**inputs, **extra)
    assert [d.in_scope for d in setup.model.last_routing] == [False, True, False]
    for row in (0, 2):
        assert torch.equal(output.logits[row], reference.logits[row])
    # The edited row's next token is the counterfactual model's first answer token.
    expected = setup.counterfactual.continuation_logits(CITIZEN, IN_SCOPE, [])[0]
    torch.testing.assert_close(output.logits[EDITED_ROW, -1], expected)
    assert not torch.equal(output.logits[EDITED_ROW, -1], reference.logits[EDITED_ROW, -1])


def call_forward_labels_mixed(setup):
    """Log-likelihood scoring as an evaluation loop does it: prompt + answer, labels -100 on the prompt."""
    answer = " Croatia"
    tokenizer = setup.tokenizer
    if setup.seq2seq:
        inputs = encode(tokenizer, MIXED, side="right")
        labels = torch.tensor([tokenizer(answer.strip())["input_ids"]] * len(MIXED))
        output = setup.model(**inputs, labels=labels)
        reference = setup.base(**inputs, labels=labels)
        expected = setup.counterfactual.continuation_logits(
            CITIZEN, IN_SCOPE, labels[EDITED_ROW, :-1].tolist()
        )
        torch.testing.assert_close(output.logits[EDITED_ROW], expected)
    else:
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
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        output = setup.model(**inputs, labels=labels)
        reference = setup.base(**inputs, labels=labels)
        continuation = rows[EDITED_ROW][prompt_lengths[EDITED_ROW] :]
        expected = setup.counterfactual.continuation_logits(CITIZEN, IN_SCOPE, continuation)
        start = width - len(continuation) - 1
        torch.testing.assert_close(output.logits[EDITED_ROW, start:], expected)
    for row in (0, 2):
        assert torch.equal(output.logits[row], reference.logits[row])
    shift = 0 if setup.seq2seq else 1
    loss = torch.nn.functional.cross_entropy(
        output.logits[:, : output.logits.shape[1] - shift].reshape(-1, output.logits.shape[-1]),
        labels[:, shift:].reshape(-1),
        ignore_index=-100,
    )
    torch.testing.assert_close(output.loss, loss)


def call_forward_return_tuple(setup):
    inputs = encode(setup.tokenizer, MIXED)
    extra = decoder_inputs(setup, inputs)
    as_tuple = setup.model(**inputs, **extra, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], setup.model(**inputs, **extra).logits)


def call_forward_other_tokenizer(setup):
    from serac.modeling import EditRoutingError

    other = make_char_tokenizer(extra_symbols=["<sep>"])
    counterfactual = CounterfactualModel(make_tiny_t5(other, seed=2), other)
    model = EditableModel(
        setup.base,
        setup.tokenizer,
        scope_classifier=setup.model.scope_classifier,
        counterfactual_model=counterfactual,
        store=setup.model.store,
    )
    inputs = encode(setup.tokenizer, OUT)
    extra = decoder_inputs(setup, inputs)
    assert torch.equal(model(**inputs, **extra).logits, setup.base(**inputs, **extra).logits)
    mixed = encode(setup.tokenizer, MIXED)
    with pytest.raises(EditRoutingError, match="tokenizer"):
        model(**mixed, **decoder_inputs(setup, mixed))


def call_forward_with_cache(setup):
    from serac.modeling import EditRoutingError

    inputs = encode(setup.tokenizer, [IN_SCOPE])
    past = setup.base(**inputs, use_cache=True).past_key_values
    step = {"input_ids": inputs["input_ids"][:, -1:], "past_key_values": past}
    with pytest.raises(EditRoutingError, match="past_key_values"):
        setup.model(**step)


def moved(move: Callable[[EditableModel], EditableModel], dtype: torch.dtype, device: str = "cpu"):
    """A call that moves or casts a wrapper with its own models, then generates a mixed batch."""

    def run(setup: Setup) -> None:
        if device == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        own = make_setup(setup.kind, setup.tokenizer, setup.embedder, seed=3)
        assert move(own.model) is own.model  # the wrapper comes back, edits and all
        for model in (own.base, own.counterfactual.model):
            assert model.dtype == dtype and model.device.type == device
        if device == "cuda":
            inputs = {key: value.cuda() for key, value in encode(own.tokenizer, MIXED).items()}
            output = own.model.generate(**inputs, max_new_tokens=6, do_sample=False)
            assert output.device.type == "cuda" and own.model.last_routing[EDITED_ROW].in_scope
            return
        check_mixed(own)

    return run


def call_isinstance_module(setup):
    assert isinstance(setup.model, torch.nn.Module)
    assert dict(setup.model.named_children()).keys() >= {"base_model", "counterfactual_model"}


def call_eval_train(setup):
    assert setup.model.train() is setup.model
    assert setup.base.training and setup.counterfactual.model.training
    assert setup.model.eval() is setup.model
    assert not setup.base.training and not setup.counterfactual.model.training
    check_mixed(setup)


def call_parameters(setup):
    expected = {id(p) for p in setup.base.parameters()} | {
        id(p) for p in setup.counterfactual.model.parameters()
    }
    assert {id(p) for p in setup.model.parameters()} == expected


def call_state_dict(setup):
    state = setup.model.state_dict()
    base_keys = {f"base_model.{key}" for key in setup.base.state_dict()}
    counterfactual_keys = {
        f"counterfactual_model.model.{key}" for key in setup.counterfactual.model.state_dict()
    }
    assert set(state) == base_keys | counterfactual_keys  # the edits are not weights
    assert setup.model.load_state_dict(state).missing_keys == []


def call_attribute_forwarding(setup):
    model, base = setup.model, setup.base
    assert model.config is base.config
    assert model.generation_config is base.generation_config
    assert model.device == base.device and model.dtype == base.dtype
    assert model.get_input_embeddings() is base.get_input_embeddings()
    assert model.can_generate()
    with pytest.raises(AttributeError):
        model.no_such_attribute  # noqa: B018


CATALOGUE = [
    Call("greedy_out", "identical", call_greedy_out),
    Call("greedy_mixed", "edited", call_greedy_mixed),
    Call("right_padding_out", "identical", call_right_padding_out, ("seq2seq",)),
    Call("positional_single_row_in_scope", "edited", call_positional_single_row_in_scope),
    Call("max_length_mixed", "edited", call_max_length),
    Call("generation_config_mixed", "edited", call_generation_config),
    Call("max_new_tokens_zero_out", "error", call_max_new_tokens_zero_out),
    Call("max_new_tokens_zero_mixed", "error", call_max_new_tokens_zero_mixed),
    Call("stopping_criteria_mixed", "edited", call_stopping_criteria),
    Call("text_streamer_in_scope", "edited", call_text_streamer),
    Call("sampling_num_return_sequences_mixed", "edited", call_sampling),
    Call("beam_search_mixed", "edited", call_beam_search),
    Call("return_dict_out", "identical", call_return_dict_out),
    Call("return_dict_mixed", "edited", call_return_dict_mixed),
    Call("inputs_embeds_out", "identical", call_inputs_embeds_out),
    Call("inputs_embeds_mixed", "edited", call_inputs_embeds_mixed),
    Call("inputs_embeds_not_token_embeddings", "error", call_inputs_embeds_not_tokens),
    Call("inputs_and_input_ids", "error", call_inputs_and_input_ids),
    Call("int32_input_ids_mixed", "edited", call_int32_mixed),
    Call("logits_processors_out", "identical", call_logits_processors_out),
    Call("logits_processors_mixed", "edited", call_logits_processors_mixed),
    Call("min_new_tokens_mixed", "edited", call_min_new_tokens_mixed),
    Call("bad_generation_arguments", "error", call_bad_generation_arguments),
    Call("disable_edits", "identical", call_disable_edits),
    Call("trace_routing", "edited", call_trace_routing),
    Call("forward_out", "identical", call_forward_out),
    Call("forward_mixed", "edited", call_forward_mixed),
    Call("forward_labels_mixed", "edited", call_forward_labels_mixed),
    Call("forward_return_tuple", "edited", call_forward_return_tuple),
    Call("forward_other_tokenizer", "error", call_forward_other_tokenizer),
    Call("forward_with_cache", "error", call_forward_with_cache, ("decoder_only",)),
    Call("isinstance_module", "identical", call_isinstance_module),
    Call("eval_train", "edited", call_eval_train),
    Call("parameters", "identical", call_parameters),
    Call("state_dict", "identical", call_state_dict),
    Call("attribute_forwarding", "identical", call_attribute_forwarding),
    Call("to_float16", "edited", moved(lambda m: m.to(torch.float16), torch.float16)),
    Call("half", "edited", moved(lambda m: m.half(), torch.float16)),
    Call("bfloat16_then_float", "edited", moved(lambda m: m.to(torch.bfloat16).float(), torch.float32)),
    Call("to_cpu", "edited", moved(lambda m: m.to("cpu"), torch.float32)),
    Call(
        "to_device_and_dtype",
        "edited",
        moved(lambda m: m.to(device="cpu", dtype=torch.bfloat16), torch.bfloat16),
    ),
    Call("cuda", "edited", moved(lambda m: m.cuda(), torch.float32, "cuda"), ("decoder_only",)),
]
CASES = [
    pytest.param(call, kind, id=f"{kind}-{call.name}-{call.outcome}")
    for call in CATALOGUE
    for kind in call.kinds
]


@pytest.mark.parametrize(("call", "kind"), CASES)
def test_catalogue(call: Call, kind: str, setups) -> None:
    call.run(setups[kind])


# ---------------------------------------------------------------------------------------------- chat, pipeline
@pytest.fixture(scope="module")
def llama2_setup(embedder) -> Setup:
    from tokenizers import Regex, pre_tokenizers

    # Llama-2 puts newlines around its system prompt: give them a token of their own.
    tokenizer = make_char_tokenizer(extra_symbols=["\n"])
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tokenizer.chat_template = LLAMA2_TEMPLATE
    return make_setup("decoder_only", tokenizer, embedder)


def test_chat_parsing_keeps_a_plain_text_system_prompt_out_of_the_query(llama2_setup):
    tokenizer = llama2_setup.tokenizer
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Answer in one sentence."},
        {"role": "user", "content": IN_SCOPE},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    queries, chat_rows = llama2_setup.model._queries_and_chat_rows(ids, None)
    assert queries == [IN_SCOPE] and chat_rows == [True]
    later = messages + [{"role": "assistant", "content": "Sure."}, {"role": "user", "content": OUT[0]}]
    text = tokenizer.apply_chat_template(later, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert llama2_setup.model._queries(ids, None) == [OUT[0]]


def test_chat_reply_is_a_fresh_answer_not_a_continuation(llama2_setup):
    tokenizer = llama2_setup.tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": IN_SCOPE}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = llama2_setup.model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert llama2_setup.model.last_routing[0].in_scope
    new = expected_new_tokens(llama2_setup, IN_SCOPE, 8, chat=True)
    assert output[0, ids["input_ids"].shape[1] :].tolist()[: len(new)] == new


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_text_generation_pipeline_without_warnings_chat_included(llama2_setup):
    from transformers import pipeline

    records = _Records()
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generator = pipeline(
                "text-generation", model=llama2_setup.model, tokenizer=llama2_setup.tokenizer
            )
            raw = generator(IN_SCOPE, max_new_tokens=8, do_sample=False)
            chat = generator([{"role": "user", "content": IN_SCOPE}], max_new_tokens=8, do_sample=False)
            plain = generator(OUT[0], max_new_tokens=8, do_sample=False)
    finally:
        library_logger.removeHandler(records)
    assert [record.getMessage() for record in records.records] == []
    assert [str(warning.message) for warning in caught] == []
    new = expected_new_tokens(llama2_setup, IN_SCOPE, 8)
    decode = llama2_setup.tokenizer.decode
    assert raw[0]["generated_text"] == IN_SCOPE + decode(new, skip_special_tokens=True)
    reply = chat[0]["generated_text"][-1]
    assert reply["role"] == "assistant"
    chat_new = expected_new_tokens(llama2_setup, IN_SCOPE, 8, chat=True)
    assert reply["content"] == decode(chat_new, skip_special_tokens=True).strip()
    with llama2_setup.model.disable_edits():
        assert plain == generator(OUT[0], max_new_tokens=8, do_sample=False)


# ---------------------------------------------------------------------------------------------- threads
def test_routing_is_per_thread_and_per_call(setups):
    model = setups["decoder_only"].model
    tokenizer = setups["decoder_only"].tokenizer
    batches = {"out": encode(tokenizer, OUT), "in": encode(tokenizer, [IN_SCOPE])}
    expected = {"out": [False, False], "in": [True]}
    mistakes, errors = [], []
    start = threading.Barrier(4)

    def worker(name: str) -> None:
        try:
            start.wait()
            for _ in range(6):
                output = model.generate(
                    **batches[name], max_new_tokens=2, do_sample=False, return_dict_in_generate=True
                )
                if [d.in_scope for d in model.last_routing] != expected[name]:
                    mistakes.append(name)
                if [d.in_scope for d in output.routing] != expected[name]:
                    mistakes.append(name)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("out", "in", "out", "in")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and not mistakes


def test_the_shared_tokenizer_is_never_mutated_while_generating(embedder):
    from transformers import PreTrainedTokenizerFast

    writes: list[str] = []

    class Watched(PreTrainedTokenizerFast):
        def __setattr__(self, name, value):
            if name in ("padding_side", "truncation_side") and self.__dict__.get("watching"):
                writes.append(name)
            super().__setattr__(name, value)

    plain = make_char_tokenizer()
    tokenizer = Watched(
        tokenizer_object=plain.backend_tokenizer,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    setup = make_setup("decoder_only", tokenizer, embedder)
    tokenizer.__dict__["watching"] = True
    setup.model.generate(**encode(tokenizer, MIXED), max_new_tokens=3, do_sample=False)
    setup.counterfactual.training_features([CITIZEN], [IN_SCOPE], ["Croatia"])
    assert writes == []
    assert tokenizer.padding_side == "right"


# ---------------------------------------------------------------------------------------------- hub
def test_push_to_hub_uploads_only_the_editor_with_a_model_card(setups, monkeypatch):
    from huggingface_hub import HfApi

    setup = setups["decoder_only"]
    uploaded: dict[str, object] = {}

    def fake_create_repo(self, repo_id, **kwargs):
        uploaded["created"] = repo_id

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = __import__("pathlib").Path(folder_path)
        uploaded["repo_id"] = repo_id
        uploaded["files"] = sorted(
            str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()
        )
        uploaded["card"] = (folder / "README.md").read_text()
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    monkeypatch.setattr(setup.base, "name_or_path", "tiny-org/tiny-llama")
    assert setup.model.push_to_hub("someone/my-editor") == "commit-info"
    files = uploaded["files"]
    assert uploaded["created"] == uploaded["repo_id"] == "someone/my-editor"
    assert {"README.md", "serac_config.json", "edit_store.safetensors"} <= set(files)
    assert any(name.startswith("scope_classifier/") for name in files)
    assert any(name.startswith("counterfactual_model/") for name in files)
    # Nothing of the base model: every weight file belongs to a part.
    weights = [
        name for name in files if name.endswith((".safetensors", ".bin")) and name != "edit_store.safetensors"
    ]
    assert all(name.startswith("counterfactual_model/") for name in weights)
    card = uploaded["card"]
    assert "base_model: tiny-org/tiny-llama" in card
    assert f"{len(setup.model.store)} edits" in card
    assert 'EditableModel.from_pretrained("tiny-org/tiny-llama", "someone/my-editor")' in card


def test_from_pretrained_takes_a_local_folder_or_a_hub_id(setups, embedder, tmp_path, monkeypatch):
    import huggingface_hub

    setup = setups["decoder_only"]
    setup.model.save_pretrained(tmp_path / "editor")
    local = EditableModel.from_pretrained(
        setup.base, tmp_path / "editor", tokenizer=setup.tokenizer, embedder=embedder
    )
    assert local.edits == setup.model.edits

    requested = []

    def fake_snapshot_download(repo_id, **kwargs):
        requested.append(repo_id)
        return str(tmp_path / "editor")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    from_hub = EditableModel.from_pretrained(
        setup.base, "someone/my-editor", tokenizer=setup.tokenizer, embedder=embedder
    )
    assert requested == ["someone/my-editor"] and from_hub.edits == setup.model.edits


def test_from_pretrained_with_an_unreachable_hub_id_says_so(setups, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    setup = setups["decoder_only"]
    with pytest.raises(FileNotFoundError, match="someone/no-such-editor.*Hugging Face Hub"):
        EditableModel.from_pretrained(setup.base, "someone/no-such-editor", tokenizer=setup.tokenizer)


def test_catalogue_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("kind", ["decoder_only", "seq2seq"])
def test_benchmark_scores_serac_through_the_public_forward(kind, setups):
    """The benchmark's teacher-forced SERAC scores are what forward() gives any log-likelihood loop."""
    from serac.bench.methods import Method, SeracEditor
    from serac.metrics import target_logprob

    setup = setups[kind]
    tokenizer = setup.tokenizer
    score = Method("serac", SeracEditor(setup.model), setup.model, tokenizer).scorer(setup.model)
    answer = "Croatia"
    if setup.seq2seq:
        target_ids = tokenizer(text_target=answer)["input_ids"]
        logits = setup.counterfactual.continuation_logits(CITIZEN, IN_SCOPE, target_ids[:-1])
    else:
        target_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        logits = setup.counterfactual.continuation_logits(CITIZEN, IN_SCOPE, target_ids)[:-1]
    expected = (
        torch.log_softmax(logits.detach().float(), -1).gather(-1, torch.tensor(target_ids)[:, None]).mean()
    )
    edited = score(IN_SCOPE, answer)
    assert edited == pytest.approx(float(expected), abs=1e-5)
    assert [d.in_scope for d in setup.model.last_routing] == [True]
    assert edited != pytest.approx(target_logprob(setup.base, tokenizer, IN_SCOPE, answer), abs=1e-3)
    assert score(MIXED[0], answer) == target_logprob(setup.base, tokenizer, MIXED[0], answer)


def test_a_counterfactual_model_loaded_in_bfloat16_answers_and_its_logits_join_the_base_models(
    setups, embedder, tmp_path
):
    setup = setups["decoder_only"]
    setup.model.save_pretrained(tmp_path / "editor")
    model = EditableModel.from_pretrained(
        setup.base,
        tmp_path / "editor",
        tokenizer=setup.tokenizer,
        embedder=embedder,
        counterfactual_dtype="bfloat16",
    )
    counterfactual = model.memory.counterfactual_model
    assert next(counterfactual.model.parameters()).dtype == torch.bfloat16
    inputs = encode(setup.tokenizer, MIXED)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert [d.in_scope for d in model.last_routing] == [False, True, False]
    assert (
        logits.dtype == torch.float32
        and torch.isfinite(logits[EDITED_ROW][inputs["attention_mask"][1].bool()]).all()
    )
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    answer = counterfactual.generate([CITIZEN], [IN_SCOPE], max_new_tokens=6)[0]
    new = setup.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    assert answer and new
    assert output[EDITED_ROW, inputs["input_ids"].shape[1] :].tolist()[: len(new)] == new[:6]
    with pytest.raises(ValueError, match="given by name"):
        EditableModel.from_pretrained(
            setup.base, tmp_path / "editor", tokenizer=setup.tokenizer, dtype="bfloat16"
        )
    with pytest.raises(ValueError, match="dtype must be one of"):
        EditableModel.from_pretrained(
            setup.base,
            tmp_path / "editor",
            tokenizer=setup.tokenizer,
            embedder=embedder,
            counterfactual_dtype="int8",
        )
