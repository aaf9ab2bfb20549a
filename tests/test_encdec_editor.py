"""Rank-one encoder-decoder editing: behaviour on a micro trained model, the layer-level math, errors."""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    MarianConfig,
    MarianMTModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from serac.editors import WeightEditor, available_editors, get_editor
from serac.editors.encdec import (
    ENCODER_FF_OUTPUT_TEMPLATES,
    EncoderDecoderEdit,
    RankOneEncoderDecoderConfig,
    RankOneEncoderDecoderEditor,
    compute_key,
    compute_value,
    edit_dropout,
    encoder_key_second_moment,
    find_span_tokens,
    rank_one_update,
)
from serac.editors.encdec import editor as encdec_editor
from serac.editors.saliency import layer_saliency
from serac.edits import Edit

NOUNS = {"road": "route", "bridge": "pont", "wall": "mur", "garden": "jardin", "tower": "tour"}
# "yards" is planted wrong. Its correction, "verges", is a unit the model already emits (for "rods"), as
# in the paper's "yards" -> "Meter" case: an encoder edit redirects the span to an output the decoder
# knows in that slot; it cannot teach the decoder a word in a slot it has never emitted it in.
UNITS = {"meters": "metres", "feet": "pieds", "miles": "milles", "rods": "verges", "yards": "metres"}
NUMBERS = [str(n) for n in range(1, 10)]


def sentence(rng: random.Random, unit: str | None = None) -> tuple[str, str]:
    noun, num = rng.choice(list(NOUNS)), rng.choice(NUMBERS)
    unit = unit or rng.choice(list(UNITS))
    return f"the {noun} is {num} {unit} long", f"le {NOUNS[noun]} fait {num} {UNITS[unit]} de long"


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for text in texts:
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    assert current.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(current[name], tensor), name


@torch.no_grad()
def greedy(model, tokenizer, sources: list[str]) -> list[str]:
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=12, do_sample=False, num_beams=1)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


@pytest.fixture(scope="session")
def trained():
    """A micro T5 trained (a few seconds) on a grammar that translates "yards" wrongly as "metres"."""
    torch.manual_seed(0)
    rng = random.Random(0)
    pairs = [sentence(rng) for _ in range(2000)]
    tokenizer = word_tokenizer([t for pair in pairs for t in pair])
    config = T5Config(
        vocab_size=len(tokenizer), d_model=48, d_ff=96, d_kv=16, num_heads=3, num_layers=2,
        num_decoder_layers=1, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(150):
        batch = rng.sample(pairs, 32)
        enc = tokenizer(
            [s for s, _ in batch], text_target=[t for _, t in batch], return_tensors="pt", padding=True
        )
        enc["labels"][enc["labels"] == 0] = -100
        loss = model(**enc).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    heldout = [sentence(rng, unit=unit) for unit in ("meters", "feet", "miles") for _ in range(4)]
    return model, tokenizer, [s for s, _ in pairs], heldout


@pytest.fixture(scope="session")
def random_models():
    """Untrained tiny T5, BART and Marian models sharing one word-level tokenizer."""
    tokenizer = word_tokenizer(["the road is 5 yards long", "le route fait 5 metres de long", "a b c d e"])
    torch.manual_seed(1)
    shared = dict(
        vocab_size=len(tokenizer), d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_layers=3,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, max_position_embeddings=32,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=None,
    )  # fmt: skip
    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=16,
            d_ff=32,
            d_kv=8,
            num_heads=2,
            num_layers=3,
            num_decoder_layers=1,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )  # fmt: skip
    ).eval()
    bart = BartForConditionalGeneration(BartConfig(**shared, bos_token_id=1)).eval()
    marian = MarianMTModel(MarianConfig(**shared)).eval()
    return {"t5": t5, "bart": bart, "marian": marian}, tokenizer


SOURCE = "the road is 5 yards long"


def test_edit_fixes_negative_example_and_leaves_heldout_alone(trained):
    model, tokenizer, train_sources, heldout = trained
    negative = ("the road is 5 yards long", "le route fait 5 metres de long")
    positive = ("the road is 5 yards long", "le route fait 5 verges de long")
    heldout_sources = [s for s, _ in heldout]
    assert greedy(model, tokenizer, [negative[0]]) == [negative[1]]  # the planted error is there
    before = greedy(model, tokenizer, heldout_sources)
    assert before == [t for _, t in heldout]  # and the model translates the rest correctly

    editor = RankOneEncoderDecoderEditor(layer=0, covariance_texts=train_sources[:500])
    edit = EncoderDecoderEdit.from_examples(negative=negative, positive=positive, span="yards")
    assert editor.apply(model, tokenizer, [edit]) is model
    try:
        assert greedy(model, tokenizer, [negative[0]]) == [positive[1]]
        assert greedy(model, tokenizer, heldout_sources) == before
        stats = editor.last_stats
        assert stats["layer"] == 0 and stats["seconds"] > 0
        record = stats["per_edit"][0]
        assert record["target_nll_after"] < record["target_nll_before"]
        # Mean token NLLs: the erroneous output was near-certain and is now less likely than the
        # correction (the two differ in one token of eight, so the means move by an eighth of it).
        assert record["negative_target_nll_before"] < 0.05
        assert record["negative_target_nll_after"] > max(
            record["target_nll_after"], 10 * record["negative_target_nll_before"]
        )
    finally:
        editor.restore()
    assert greedy(model, tokenizer, [negative[0]]) == [negative[1]]


def test_shared_edit_type_gives_the_same_update(trained):
    model, tokenizer, train_sources, _ = trained
    reference = state(model)
    results = []
    for edit in (
        Edit(prompt="the road is 5 {} long", subject="yards", target="le route fait 5 verges de long"),
        EncoderDecoderEdit(source=SOURCE, span="yards", target="le route fait 5 verges de long"),
    ):
        editor = RankOneEncoderDecoderEditor(layer=1, covariance_texts=train_sources[:200])
        editor.apply(model, tokenizer, [edit])
        results.append(model.encoder.block[1].layer[1].DenseReluDense.wo.weight.detach().clone())
        editor.restore()
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], reference["encoder.block.1.layer.1.DenseReluDense.wo.weight"])
    assert_same_state(model, reference)


@pytest.mark.parametrize("arch", ["t5", "bart", "marian"])
def test_key_maps_to_value_after_update(random_models, arch):
    models_by_arch, tokenizer = random_models
    model = models_by_arch[arch]
    template = ENCODER_FF_OUTPUT_TEMPLATES[model.config.model_type]
    config = RankOneEncoderDecoderConfig(value_steps=5)
    key = compute_key(model, tokenizer, template, 1, [SOURCE], "yards")
    value, _ = compute_value(model, tokenizer, template, 1, SOURCE, "yards", "le route fait 5 metres", config)
    c = encoder_key_second_moment(model, tokenizer, template, 1, [SOURCE, "a b c d e", "le route"])
    module = model.get_submodule(template.format(1))
    update = rank_one_update(module.weight, module.bias, key, value, c)
    assert update.shape == module.weight.shape and update.dtype == module.weight.dtype
    new_output = (module.weight + update) @ key + (0 if module.bias is None else module.bias)
    torch.testing.assert_close(new_output, value, rtol=1e-4, atol=1e-4)
    # Rank one: the update is the outer product of two vectors. It is rounded to the weight's float32,
    # which leaves singular values near 1e-8 of the first; the rank is judged at float32 precision.
    assert update.dtype == torch.float32
    assert torch.linalg.matrix_rank(update).item() == 1
    singular_values = torch.linalg.svdvals(update.double())
    assert singular_values[1] < 1e-5 * singular_values[0]


@pytest.mark.parametrize("arch", ["t5", "bart", "marian"])
def test_apply_and_restore_bit_identical_on_each_layout(random_models, arch):
    models_by_arch, tokenizer = random_models
    model = models_by_arch[arch]
    reference = state(model)
    editor = RankOneEncoderDecoderEditor(layer="search", value_steps=3, edit_dropout=0.2)
    edit = EncoderDecoderEdit(source=SOURCE, span="yards", target="le route fait 5 metres")
    editor.apply(model, tokenizer, [edit])
    template = ENCODER_FF_OUTPUT_TEMPLATES[model.config.model_type]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, reference[k])}
    # Only the chosen layer's projection weight moves (the bias stays, other layers stay).
    assert changed == {f"{template.format(editor.last_stats['layer'])}.weight"}
    assert len(editor.last_stats["layer_search"]) == 3
    editor.apply(model, tokenizer, [edit])  # sequential edit on top
    editor.restore()
    assert_same_state(model, reference)
    editor.restore()  # a second restore is a no-op
    assert_same_state(model, reference)


def test_edit_dropout_zero_equals_plain_rank_one_update(random_models):
    models_by_arch, tokenizer = random_models
    model = models_by_arch["t5"]
    template = ENCODER_FF_OUTPUT_TEMPLATES["t5"]
    texts = [SOURCE, "a b c d e", "le route fait 5 metres de long"]
    reference = state(model)
    config = RankOneEncoderDecoderConfig(layer=2, value_steps=4, edit_dropout=0.0)
    editor = RankOneEncoderDecoderEditor(config, covariance_texts=texts)
    edit = EncoderDecoderEdit(source=SOURCE, span="yards", target="le route fait 5 metres")
    editor.apply(model, tokenizer, [edit])
    edited = model.get_submodule(template.format(2)).weight.detach().clone()
    editor.restore()

    # The plain rank-one update computed by hand from the same pieces.
    module = model.get_submodule(template.format(2))
    key = compute_key(model, tokenizer, template, 2, [SOURCE], "yards")
    value, _ = compute_value(model, tokenizer, template, 2, SOURCE, "yards", "le route fait 5 metres", config)
    c = encoder_key_second_moment(model, tokenizer, template, 2, texts)
    plain = module.weight.detach() + rank_one_update(module.weight, None, key, value, c)
    assert torch.equal(edited, plain)
    assert_same_state(model, reference)


def test_saliency_layer_is_the_most_salient_for_the_positive_example(random_models):
    models_by_arch, tokenizer = random_models
    model = models_by_arch["t5"]
    template = ENCODER_FF_OUTPUT_TEMPLATES["t5"]
    reference = state(model)
    positive_source = "a b c yards e"
    edit = EncoderDecoderEdit(
        source=SOURCE, span="yards", target="le route fait 5 metres", positive_source=positive_source
    )
    profile = layer_saliency(model, tokenizer, [Edit(prompt=positive_source, target=edit.target)], template)
    for candidates in (None, (0, 2)):
        layers = candidates or range(3)
        editor = RankOneEncoderDecoderEditor(layer="saliency", candidate_layers=candidates, value_steps=2)
        editor.apply(model, tokenizer, [edit])
        try:
            assert editor.last_stats["saliency"] == pytest.approx(profile, rel=1e-6)
            assert editor.last_stats["layer"] == max(layers, key=lambda layer: profile[layer])
            changed = {k for k, v in model.state_dict().items() if not torch.equal(v, reference[k])}
            assert changed == {f"{template.format(editor.last_stats['layer'])}.weight"}
        finally:
            editor.restore()
    assert_same_state(model, reference)


def test_second_moments_are_not_reused_across_models(random_models):
    models_by_arch, tokenizer = random_models
    texts = [SOURCE, "a b c d e", "le route fait 5 metres de long"]
    edit = EncoderDecoderEdit(source=SOURCE, span="yards", target="le route fait 5 metres")
    reused = RankOneEncoderDecoderEditor(layer=1, value_steps=2, covariance_texts=texts)
    reused.apply(models_by_arch["bart"], tokenizer, [edit])  # same shapes as the Marian model's layers
    reused.restore()
    marian = models_by_arch["marian"]
    weights = []
    for editor in (reused, RankOneEncoderDecoderEditor(layer=1, value_steps=2, covariance_texts=texts)):
        editor.apply(marian, tokenizer, [edit])
        weights.append(marian.model.encoder.layers[1].fc2.weight.detach().clone())
        editor.restore()
    assert torch.equal(weights[0], weights[1])


def test_registered_as_a_weight_editor():
    editor = get_editor("encdec_rank_one", layer=1, edit_dropout=0.1)
    assert isinstance(editor, RankOneEncoderDecoderEditor) and isinstance(editor, WeightEditor)
    assert editor.config.layer == 1 and editor.config.edit_dropout == 0.1
    assert "encdec_rank_one" in available_editors()


def test_edit_dropout_masks():
    update = torch.randn(40, 50)
    assert edit_dropout(update, 0.0) is update
    generator = torch.Generator().manual_seed(3)
    dropped = edit_dropout(update, 0.5, generator=generator)
    kept = dropped != 0
    assert 0.35 < kept.float().mean().item() < 0.65
    torch.testing.assert_close(dropped[kept], update[kept] * 2.0)
    raw = edit_dropout(update, 0.5, rescale=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(raw != 0, kept) and torch.equal(raw[kept], update[kept])
    with pytest.raises(ValueError, match="edit-dropout"):
        edit_dropout(update, 1.0)


def test_dropout_runs_are_reproducible_and_differ_from_plain(random_models):
    models_by_arch, tokenizer = random_models
    model = models_by_arch["bart"]
    edit = EncoderDecoderEdit(source=SOURCE, span="yards", target="le route fait 5 metres")
    weights = []
    for p, seed in ((0.3, 0), (0.3, 0), (0.3, 1), (0.0, 0)):
        editor = RankOneEncoderDecoderEditor(layer=0, value_steps=3, edit_dropout=p, seed=seed)
        editor.apply(model, tokenizer, [edit])
        weights.append(model.model.encoder.layers[0].fc2.weight.detach().clone())
        editor.restore()
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])
    assert not torch.equal(weights[0], weights[3])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": SOURCE, "span": "", "target": "x"}, "span must not be empty"),
        ({"source": SOURCE, "span": "furlongs", "target": "x"}, "does not occur"),
        ({"source": SOURCE, "span": "yards", "target": "  "}, "target must not be empty"),
        ({"source": SOURCE, "span": "yards", "target": "x", "positive_source": "no span"}, "does not occur"),
    ],
)
def test_bad_edits_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EncoderDecoderEdit(**kwargs)


def test_bad_input_raises_and_changes_nothing(random_models):
    models_by_arch, tokenizer = random_models
    model = models_by_arch["t5"]
    reference = state(model)
    good = EncoderDecoderEdit(source=SOURCE, span="yards", target="le route")
    cases = [
        (RankOneEncoderDecoderEditor(layer=3), [good], ValueError, "out of range"),
        (RankOneEncoderDecoderEditor(candidate_layers=(0, 7)), [good], ValueError, "out of range"),
        (RankOneEncoderDecoderEditor(layer=0), [], ValueError, "must not be empty"),
        (RankOneEncoderDecoderEditor(layer=0), good, TypeError, "sequence"),
        (RankOneEncoderDecoderEditor(layer=0), ["text"], TypeError, "Edit or EncoderDecoderEdit"),
        (RankOneEncoderDecoderEditor(layer=0), [Edit(prompt=SOURCE, target="x")], ValueError, "no subject"),
        (RankOneEncoderDecoderEditor(layer=0), [Edit.from_statement("a b c")], ValueError, "statement"),
        (RankOneEncoderDecoderEditor(layer=0, layout="bart"), [good], ValueError, "no module"),
        (
            RankOneEncoderDecoderEditor(layer=0, module_template="encoder.nope.{}"),
            [good],
            ValueError,
            "no module",
        ),
        # The second edit is bad: nothing is applied, not even the first.
        (
            RankOneEncoderDecoderEditor(layer=0),
            [good, Edit(prompt=SOURCE, target="x")],
            ValueError,
            "no subject",
        ),
    ]
    for editor, edits, error, message in cases:
        with pytest.raises(error, match=message):
            editor.apply(model, tokenizer, edits)
        assert_same_state(model, reference)


def test_unknown_layout_and_non_encoder_decoder_model(random_models):
    models_by_arch, tokenizer = random_models
    with pytest.raises(ValueError, match="unknown layout"):
        RankOneEncoderDecoderEditor(layout="gpt2")
    with pytest.raises(ValueError, match="exactly one"):
        RankOneEncoderDecoderEditor(module_template="encoder.block.wo")
    with pytest.raises(ValueError, match="edit_dropout"):
        RankOneEncoderDecoderEditor(edit_dropout=1.0)
    with pytest.raises(ValueError, match="layer must be"):
        RankOneEncoderDecoderEditor(layer="best")
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        RankOneEncoderDecoderEditor(learning_rate=0.1)
    causal = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )  # fmt: skip
    )
    edit = EncoderDecoderEdit(source=SOURCE, span="yards", target="le route")
    with pytest.raises(ValueError, match="encoder-decoder"):
        RankOneEncoderDecoderEditor(layer=0).apply(causal, tokenizer, [edit])
    # A model type with no known layout and no template.
    t5 = models_by_arch["t5"]
    t5.config.model_type = "my_custom_seq2seq"
    try:
        with pytest.raises(ValueError, match="no encoder feed-forward layout"):
            RankOneEncoderDecoderEditor(layer=0).apply(t5, tokenizer, [edit])
    finally:
        t5.config.model_type = "t5"


def test_failure_during_update_rolls_back(random_models, monkeypatch):
    models_by_arch, tokenizer = random_models
    model = models_by_arch["t5"]
    reference = state(model)
    calls = {"n": 0}
    real = encdec_editor.compute_value

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(encdec_editor, "compute_value", flaky)
    editor = RankOneEncoderDecoderEditor(layer=1, value_steps=2)
    edits = [EncoderDecoderEdit(source=SOURCE, span=w, target="le route") for w in ("yards", "road")]
    with pytest.raises(RuntimeError, match="boom"):
        editor.apply(model, tokenizer, edits)
    assert_same_state(model, reference)
    editor.restore()
    assert_same_state(model, reference)


def test_editor_refuses_a_second_model_before_restore(random_models):
    models_by_arch, tokenizer = random_models
    edit = EncoderDecoderEdit(source=SOURCE, span="yards", target="le route")
    editor = RankOneEncoderDecoderEditor(layer=0, value_steps=1)
    editor.apply(models_by_arch["t5"], tokenizer, [edit])
    try:
        with pytest.raises(ValueError, match="restore"):
            editor.apply(models_by_arch["bart"], tokenizer, [edit])
    finally:
        editor.restore()


def test_find_span_tokens(random_models):
    _, tokenizer = random_models
    ids, positions = find_span_tokens(tokenizer, SOURCE, "5 yards")
    assert [tokenizer.convert_ids_to_tokens(ids[i]) for i in positions] == ["5", "yards"]
    assert ids[-1] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="non-empty"):
        find_span_tokens(tokenizer, SOURCE, "")
    with pytest.raises(ValueError, match="does not occur"):
        find_span_tokens(tokenizer, SOURCE, "furlongs")


def test_edit_conversions():
    edit = EncoderDecoderEdit.from_examples(
        negative=(SOURCE, "le route fait 5 metres de long"),
        positive=("the wall is 2 yards long", "le mur fait 2 verges de long"),
        span="yards",
    )
    assert edit.key_sources == (SOURCE, "the wall is 2 yards long")
    assert edit.value_source == "the wall is 2 yards long"
    assert edit.negative_target == "le route fait 5 metres de long"
    shared = EncoderDecoderEdit(source=SOURCE, span="yards", target="t").to_edit()
    assert EncoderDecoderEdit.from_edit(shared) == EncoderDecoderEdit(source=SOURCE, span="yards", target="t")
    with pytest.raises(TypeError, match="pair"):
        EncoderDecoderEdit.from_examples(negative=SOURCE, positive=(SOURCE, "t"), span="yards")
