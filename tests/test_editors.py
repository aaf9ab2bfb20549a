"""Weight editors on tiny GPT-2 and Llama models built from configs (no downloads)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from serac.editors import available_editors, get_editor, get_layout, register_editor
from serac.editors.cache import CacheEditor
from serac.editors.keys import compute_keys
from serac.editors.layer_stats import layer_second_moments
from serac.editors.layout import UnknownLayoutError, get_module, weight_as_out_in
from serac.editors.memit import MEMITEditor
from serac.editors.rome import ROMEEditor
from serac.editors.saliency import layer_saliency, select_layers
from serac.edits import Edit

CORPUS = [
    "the river runs through the old city and the market opens at dawn",
    "a small band played music in the square while people danced",
    "scientists found a new species of frog on the island last year",
    "the king of the north built a church near the mountain",
    "my team won the football game after a long season",
    "the museum shows paintings from the early years of the city",
    "she was born in a small town and studied law at the university",
    "the film was directed by a young man from the south",
    "water flows from the mountain to the sea through the valley",
    "the president said the election will be held next year",
] * 3

EDITS = [
    Edit(prompt="{} is a citizen of", subject="Ellie Kemper", target="Croatia"),
    Edit(prompt="{} plays the sport of", subject="LeBron James", target="football"),
    Edit(prompt="The capital of {} is", subject="France", target="Rome"),
    Edit(prompt="{} was born in", subject="Marie Curie", target="Paris"),
    Edit(prompt="{} speaks the language", subject="Pablo Picasso", target="Dutch"),
    Edit(prompt="{} works for", subject="Ellie Kemper", target="Google"),
]
UNRELATED = [
    Edit(prompt="{} is located in", subject="the old city", target="x"),
    Edit(prompt="{} played music in", subject="a small band", target="x"),
    Edit(prompt="{} built a church", subject="the king of the north", target="x"),
    Edit(prompt="{} won the game", subject="my team", target="x"),
]

FAST = {"stats_corpus": CORPUS, "stats_samples": 300, "context_templates": ((3, 2),), "stats_cache": True}


@pytest.fixture(scope="session", autouse=True)
def stats_cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERAC_CACHE", str(tmp_path_factory.mktemp("serac-cache")))
        yield


@pytest.fixture(scope="session")
def tokenizer():
    words = set()
    for text in CORPUS + [e.query + " " + e.target for e in EDITS + UNRELATED]:
        words.update(text.split())
    words.update(
        ["is", "a", "the", "The", "Therefore", "Because", "I", "You", ".", "of", "in", "ELLIE", "kemper"]
    )
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2}
    for word in sorted(words):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )


def _tiny(kind: str, vocab_size: int):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(
            n_layer=3,
            n_embd=32,
            n_head=2,
            n_positions=64,
            vocab_size=vocab_size,
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=1,
        )
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=vocab_size,
            max_position_embeddings=64,
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=1,
        )
        model = LlamaForCausalLM(config)
    model.eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def model(request, tokenizer):
    return _tiny(request.param, len(tokenizer))


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_identical(model, snapshot) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(p, snapshot[name]), name


def _changed(model, snapshot) -> list[str]:
    return [name for name, p in model.named_parameters() if not torch.equal(p, snapshot[name])]


def _target_logprob(model, tokenizer, edit: Edit) -> float:
    ids = tokenizer(edit.query + " " + edit.target, return_tensors="pt").input_ids
    prompt_len = len(tokenizer(edit.query).input_ids)
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].log_softmax(-1)
    return float(logp[prompt_len - 1 :].gather(1, ids[0, prompt_len:, None]).sum())


def test_registry_names_and_bad_hyperparameters():
    assert {"rome", "memit", "ft", "cache"} <= set(available_editors())
    assert isinstance(get_editor("rome", layer=1), ROMEEditor)
    with pytest.raises(KeyError, match="unknown editor"):
        get_editor("nope")
    with pytest.raises(TypeError):
        get_editor("rome", no_such_field=1)
    with pytest.raises(ValueError, match="num_steps"):
        get_editor("memit", num_steps=0)


def test_registry_is_explicit_and_takes_user_editors(monkeypatch):
    import serac.editors as editors

    monkeypatch.setattr(editors, "_EDITORS", dict(editors._EDITORS))
    assert set(available_editors()) == {
        "cache", "encdec_rank_one", "ft", "ke", "kn", "memit", "mend", "rome", "salem"
    }  # fmt: skip

    class SlowROME(ROMEEditor):
        name = "slow_rome"

    assert "slow_rome" not in available_editors()  # defining a subclass registers nothing
    register_editor("slow_rome", SlowROME)
    assert type(get_editor("slow_rome", layer=1)) is SlowROME
    with pytest.raises(TypeError):
        get_editor("slow_rome", no_such_field=1)
    register_editor("slow_rome", SlowROME)  # the same class again changes nothing
    with pytest.raises(ValueError, match="taken"):
        register_editor("rome", SlowROME)
    with pytest.raises(TypeError, match="subclass"):
        register_editor("plain", object)
    with pytest.raises(ValueError, match="non-empty"):
        register_editor("", SlowROME)
    assert type(get_editor("rome", layer=1)) is ROMEEditor


def test_rome_inserts_key_value_and_restores(model, tokenizer):
    snapshot = _snapshot(model)
    layout = get_layout(model)
    # weight_decay=0: the authors' penalty weight * ||delta|| / ||v||^2 is not scale-free, and with the tiny
    # ||v|| of a random 32-dimensional model its constant pull towards delta = 0 outweighs the target NLL; this
    # test is about the closed-form insertion, not the penalty (tested on its own below).
    editor = ROMEEditor(layer=1, num_steps=10, clamp_norm_factor=100.0, weight_decay=0.0, **FAST)
    # Subject last in the prompt: in a random tiny model attention carries little, so the value's effect on
    # the next token is only reliable where the subject's last token is the one that predicts the target.
    edit = Edit(prompt="the painting shows {}", subject="Marie Curie", target="Rome")
    before = _target_logprob(model, tokenizer, edit)
    editor.apply(model, tokenizer, [edit])
    module_name = layout.down_proj.format(1)
    assert _changed(model, snapshot) == [f"{module_name}.weight"]
    update = editor.updates[-1]
    module = get_module(model, module_name)
    templates = editor.context_templates(model, tokenizer, editor.resolved_config(model))
    prompt_key = compute_keys(model, tokenizer, module_name, [edit], templates[:1])[0]
    torch.testing.assert_close(update.inserted_key, prompt_key)
    with torch.no_grad():
        mapped = module(prompt_key[None])[0]
    # Closed form: the edited layer sends the edit prompt's key exactly to the optimized value.
    torch.testing.assert_close(mapped, update.value, rtol=1e-4, atol=1e-4)
    # The update's row space is C^-1 k*, k* the key averaged over the context templates.
    weight_change = weight_as_out_in(module.weight, layout) - weight_as_out_in(
        snapshot[f"{module_name}.weight"], layout
    )
    row = weight_change[weight_change.norm(dim=1).argmax()]
    assert torch.nn.functional.cosine_similarity(row, update.left, dim=0).abs() > 0.999
    # Keys the layer usually sees move far less than the edited key.
    unrelated = compute_keys(model, tokenizer, module_name, UNRELATED, templates)
    moved = (unrelated @ weight_change.T).norm(dim=1) / (weight_change @ update.key).norm()
    assert float(moved.max()) < 0.5, moved
    assert _target_logprob(model, tokenizer, edit) > before
    editor.restore()
    _assert_identical(model, snapshot)


def test_rome_average_insertion_sends_the_averaged_key_to_the_value(model, tokenizer):
    snapshot = _snapshot(model)
    editor = ROMEEditor(layer=1, num_steps=3, insertion_key="average", **FAST)
    editor.apply(model, tokenizer, [EDITS[0]])
    update = editor.updates[-1]
    torch.testing.assert_close(update.inserted_key, update.key)
    module = get_module(model, get_layout(model).down_proj.format(1))
    with torch.no_grad():
        torch.testing.assert_close(module(update.key[None])[0], update.value, rtol=1e-4, atol=1e-4)
    editor.restore()
    _assert_identical(model, snapshot)
    with pytest.raises(ValueError, match="insertion_key"):
        ROMEEditor(insertion_key="bare")


def test_rome_falls_back_to_the_average_key_when_the_prompt_key_is_off_direction(
    model, tokenizer, monkeypatch, caplog
):
    import serac.editors.rome.editor as rome

    real = rome.compute_template_keys

    def keys(model, tokenizer, module_name, edits, templates):
        found = real(model, tokenizer, module_name, edits, templates).clone()
        found[:, 0] = 0.0  # the bare prompt's key (template 0) along nothing
        return found

    monkeypatch.setattr(rome, "compute_template_keys", keys)
    snapshot = _snapshot(model)
    editor = ROMEEditor(layer=1, num_steps=2, **FAST)
    with caplog.at_level("WARNING", logger="serac.editors.rome.editor"):
        editor.apply(model, tokenizer, [EDITS[0]])
    update = editor.updates[-1]
    assert "nearly orthogonal" in caplog.text
    torch.testing.assert_close(update.inserted_key, update.key)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    editor.restore()
    _assert_identical(model, snapshot)


def test_rome_sequential_edits_restore_bit_identical(model, tokenizer):
    snapshot = _snapshot(model)
    editor = ROMEEditor(layer=2, num_steps=3, **FAST)
    editor.apply(model, tokenizer, [EDITS[1]])
    editor.apply(model, tokenizer, [EDITS[2], EDITS[3]])
    assert len(editor.updates) == 3
    editor.restore()
    _assert_identical(model, snapshot)


def test_memit_single_edit_meets_key_value(model, tokenizer):
    snapshot = _snapshot(model)
    layout = get_layout(model)
    editor = MEMITEditor(layers=[1], num_steps=5, mom2_update_weight=1.0, **FAST)
    editor.apply(model, tokenizer, [EDITS[0]])
    (solve,) = editor.layer_updates
    key, residual = solve.keys[:, 0], solve.residuals[:, 0]
    # One edit, one layer: dW k = r s / (1 + s) with s = k^T (lambda C)^-1 k (Sherman-Morrison), which is
    # ROME's key -> value insertion scaled by s / (1 + s).
    s = key @ torch.linalg.solve(solve.mom2_update_weight * solve.second_moment, key)
    torch.testing.assert_close(solve.update @ key, residual * s / (1 + s), rtol=1e-6, atol=1e-8)
    assert s / (1 + s) > 0.5
    singular_values = torch.linalg.svdvals(solve.update)
    assert singular_values[1] < 1e-6 * singular_values[0]  # rank one, like ROME
    # ... and in the ROME direction: the row space is C^-1 k.
    left = torch.linalg.solve(solve.second_moment, key)
    cosine = torch.nn.functional.cosine_similarity(solve.update[0], left, dim=0).abs()
    assert cosine > 0.999
    module_name = layout.down_proj.format(1)
    change = weight_as_out_in(get_module(model, module_name).weight, layout) - weight_as_out_in(
        snapshot[f"{module_name}.weight"], layout
    )
    torch.testing.assert_close(change.double(), solve.update, rtol=1e-4, atol=1e-6)
    editor.restore()
    _assert_identical(model, snapshot)


def test_memit_batch_solves_normal_equations(model, tokenizer):
    snapshot = _snapshot(model)
    editor = MEMITEditor(layers=[0, 1], num_steps=4, mom2_update_weight=50.0, value_batch_size=4, **FAST)
    editor.apply(model, tokenizer, EDITS)
    assert [u.layer for u in editor.layer_updates] == [0, 1]
    for solve in editor.layer_updates:
        assert solve.keys.shape[1] == len(EDITS)
        lhs = solve.update @ (solve.mom2_update_weight * solve.second_moment + solve.keys @ solve.keys.T)
        torch.testing.assert_close(lhs, solve.residuals @ solve.keys.T, rtol=1e-6, atol=1e-8)
    layout = get_layout(model)
    for solve in editor.layer_updates:
        name = layout.down_proj.format(solve.layer)
        change = weight_as_out_in(get_module(model, name).weight, layout) - weight_as_out_in(
            snapshot[f"{name}.weight"], layout
        )
        torch.testing.assert_close(change.double(), solve.update, rtol=1e-4, atol=1e-6)
    editor.restore()
    _assert_identical(model, snapshot)


def test_finetune_stays_inside_norm_bound(model, tokenizer):
    snapshot = _snapshot(model)
    layout = get_layout(model)
    epsilon = 2e-3
    editor = get_editor("ft", layer=2, num_steps=10, lr=1e-2, norm_constraint=epsilon)
    editor.apply(model, tokenizer, EDITS[:3])
    name = f"{layout.down_proj.format(2)}.weight"
    assert _changed(model, snapshot) == [name]
    change = (dict(model.named_parameters())[name] - snapshot[name]).abs().max()
    assert 0 < change <= epsilon + 1e-7
    assert editor.last_stats["loss"][-1] < editor.last_stats["loss"][0]
    assert not dict(model.named_parameters())[name].requires_grad
    editor.restore()
    _assert_identical(model, snapshot)


def test_cache_editor_generate(tokenizer):
    model = _tiny("llama", len(tokenizer))
    snapshot = _snapshot(model)
    editor = CacheEditor()
    wrapped = editor.apply(model, tokenizer, [EDITS[0]])
    _assert_identical(model, snapshot)
    prompts = ["ELLIE kemper is a citizen of", "the river runs through"]
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
    out = wrapped.generate(**encoded, max_new_tokens=4, do_sample=False, pad_token_id=1)
    width = encoded.input_ids.shape[1]
    hit_prompt = encoded.input_ids[0][encoded.attention_mask[0].bool()]
    target = tokenizer(" Croatia", add_special_tokens=False).input_ids
    assert out[0, :width].tolist() == encoded.input_ids[0].tolist()
    assert out[0, width : width + len(target) + 1].tolist() == target + [tokenizer.eos_token_id]
    assert tokenizer.decode(hit_prompt) == prompts[0]
    base = model.generate(
        input_ids=encoded.input_ids[1:],
        attention_mask=encoded.attention_mask[1:],
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=1,
    )
    assert out[1, : base.shape[1]].tolist() == base[0].tolist()
    assert out.shape[1] == max(width + len(target) + 1, base.shape[1])
    as_dict = wrapped.generate(
        **encoded, max_new_tokens=1, do_sample=False, pad_token_id=1, return_dict_in_generate=True
    )
    assert as_dict.sequences[0, width:].tolist() == target[:1]
    assert wrapped.config is model.config  # other attributes come from the base model
    editor.restore()
    after = wrapped.generate(
        **tokenizer([prompts[0]], return_tensors="pt"), max_new_tokens=2, do_sample=False, pad_token_id=1
    )
    expected = model.generate(
        **tokenizer([prompts[0]], return_tensors="pt"), max_new_tokens=2, do_sample=False, pad_token_id=1
    )
    assert torch.equal(after, expected)


class _UnknownModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(model_type="mystery")
        self.linear = torch.nn.Linear(4, 4)


@pytest.mark.parametrize(
    ("name", "hyperparameters", "edits", "error", "match"),
    [
        (
            "rome",
            {"layer": 1},
            [Edit.from_statement("Ellie Kemper is a citizen of Croatia.")],
            ValueError,
            "statement",
        ),
        (
            "rome",
            {"layer": 1},
            [Edit(prompt="Where does Ellie Kemper live?", target="Zagreb")],
            ValueError,
            "subject",
        ),
        ("rome", {"layer": 99}, EDITS[:1], ValueError, "out of range"),
        ("rome", {"layer": 1}, [], ValueError, "no edits"),
        ("rome", {"layer": 1}, ["not an edit"], TypeError, "Edit"),
        ("memit", {"layers": [0, 7]}, EDITS[:2], ValueError, "out of range"),
        ("memit", {"layers": [0]}, [Edit.from_statement("The sky is green.")], ValueError, "statement"),
        ("ft", {"layer": -1}, EDITS[:1], ValueError, "out of range"),
        ("cache", {}, [Edit.from_statement("The sky is green.")], ValueError, "statement"),
    ],
)
def test_bad_input_leaves_model_untouched(model, tokenizer, name, hyperparameters, edits, error, match):
    snapshot = _snapshot(model)
    editor = get_editor(name, **hyperparameters, **({} if name in ("ft", "cache") else FAST))
    with pytest.raises(error, match=match):
        editor.apply(model, tokenizer, edits)
    _assert_identical(model, snapshot)


def test_unknown_layout_is_a_clear_error(tokenizer):
    model = _UnknownModel()
    before = model.linear.weight.clone()
    with pytest.raises(UnknownLayoutError, match="mystery"):
        ROMEEditor(layer=0).apply(model, tokenizer, EDITS[:1])
    assert torch.equal(model.linear.weight, before)


def test_saliency_layer_is_resolved_lazily(model, tokenizer, monkeypatch):
    calls = []

    def select_layers(model_, tokenizer_, edits, module_template, num_layers=1):
        calls.append((module_template, num_layers, len(edits)))
        return [2]

    monkeypatch.setitem(
        sys.modules, "serac.editors.saliency", types.SimpleNamespace(select_layers=select_layers)
    )
    editor = ROMEEditor(layer="saliency", num_steps=2, **FAST)
    editor.apply(model, tokenizer, EDITS[:1])
    try:
        assert calls == [(get_layout(model).down_proj, 1, 1)]
        assert editor.last_stats["layer"] == 2
    finally:
        editor.restore()


def test_saliency_profile_matches_direct_gradients_and_leaves_model_as_it_was(model, tokenizer):
    template = get_layout(model).down_proj
    edits = EDITS[:2]
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    snapshot = _snapshot(model)
    profile = layer_saliency(model, tokenizer, edits, template)
    assert len(profile) == 3 and all(value > 0 for value in profile)
    # The same quantity by hand: mean |d NLL / d W| of each layer, per edit, averaged over edits.
    expected = []
    for layer in range(3):
        weight = get_module(model, template.format(layer)).weight
        scores = []
        for edit in edits:
            prompt_ids = tokenizer(edit.query).input_ids
            target_ids = tokenizer(" " + edit.target, add_special_tokens=False).input_ids
            input_ids = torch.tensor([prompt_ids + target_ids])
            labels = torch.tensor([[-100] * len(prompt_ids) + target_ids])
            weight.requires_grad_(True)
            try:
                loss = model(input_ids=input_ids, labels=labels).loss  # the model shifts the labels itself
                (grad,) = torch.autograd.grad(loss, [weight])
            finally:
                weight.requires_grad_(False)
            scores.append(float(grad.abs().mean()))
        expected.append(sum(scores) / len(scores))
    torch.testing.assert_close(torch.tensor(profile), torch.tensor(expected), rtol=1e-4, atol=0)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    _assert_identical(model, snapshot)
    ranked = select_layers(model, tokenizer, edits, template, num_layers=3)
    assert ranked == sorted(range(3), key=lambda layer: -profile[layer])
    assert select_layers(model, tokenizer, edits, template, candidate_layers=[0, 2]) == [
        max([0, 2], key=lambda layer: profile[layer])
    ]
    with pytest.raises(ValueError, match="out of range"):
        select_layers(model, tokenizer, edits, template, candidate_layers=[3])
    with pytest.raises(ValueError, match="no module"):
        layer_saliency(model, tokenizer, edits, "transformer.nope.{}")
    with pytest.raises(ValueError, match="must not be empty"):
        layer_saliency(model, tokenizer, [], template)


def test_rome_takes_its_layer_from_saliency(model, tokenizer):
    template = get_layout(model).down_proj
    profile = layer_saliency(model, tokenizer, EDITS[:1], template)
    most_salient = max(range(len(profile)), key=lambda layer: profile[layer])
    snapshot = _snapshot(model)
    editor = ROMEEditor(layer="saliency", num_steps=2, **FAST)
    editor.apply(model, tokenizer, EDITS[:1])
    try:
        assert editor.last_stats["layer"] == most_salient
        assert _changed(model, snapshot) == [f"{template.format(most_salient)}.weight"]
    finally:
        editor.restore()
    _assert_identical(model, snapshot)


def test_second_moment_matches_direct_computation_and_is_cached(model, tokenizer, tmp_path):
    layout = get_layout(model)
    module = get_module(model, layout.down_proj.format(1))
    keys = []
    handle = module.register_forward_pre_hook(lambda _m, inputs: keys.append(inputs[0][0].double()))
    try:
        with torch.no_grad():
            for text in CORPUS[:10]:
                model(**tokenizer(text, return_tensors="pt"))
    finally:
        handle.remove()
    keys = torch.cat(keys)
    expected = keys.T @ keys / len(keys)
    moments = layer_second_moments(
        model, tokenizer, [1], corpus=CORPUS[:10], num_samples=len(keys), cache_root=tmp_path, progress=False
    )
    torch.testing.assert_close(moments[1], expected)
    assert len(list(tmp_path.rglob("*.pt"))) == 1
    again = layer_second_moments(
        model, tokenizer, [1], corpus=CORPUS[:10], num_samples=len(keys), cache_root=tmp_path, progress=False
    )
    assert torch.equal(again[1], moments[1])


def test_value_weight_decay_is_the_norm_over_the_squared_initial_norm():
    # The ROME/MEMIT authors' compute_v / compute_z penalize v_weight_decay * ||delta|| / ||v||^2 (the norm,
    # not its square); their published weight 0.5 is meant for that form.
    from serac.editors.values import value_weight_decay

    delta = torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    initial_sq = torch.tensor([4.0, 4.0, 4.0])
    penalty = value_weight_decay(delta, initial_sq, 0.5)
    torch.testing.assert_close(penalty, torch.tensor([0.5 * 5 / 4, 0.0, 0.5 * 10 / 4]))
    # Linear in ||delta||: doubling delta doubles the penalty (a squared norm would quadruple it).
    torch.testing.assert_close(value_weight_decay(2 * delta, initial_sq, 0.5), 2 * penalty)


def test_value_optimization_applies_the_authors_weight_decay(model, tokenizer, monkeypatch):
    import serac.editors.values as values

    seen = []
    original = values.value_weight_decay

    def spy(delta, initial_sq, weight):
        out = original(delta, initial_sq, weight)
        seen.append((delta.detach().clone(), initial_sq.clone(), weight, out.detach().clone()))
        return out

    monkeypatch.setattr(values, "value_weight_decay", spy)
    snapshot = _snapshot(model)
    editor = ROMEEditor(layer=1, num_steps=3, weight_decay=0.5, early_stop_loss=0.0, **FAST)
    editor.apply(model, tokenizer, [EDITS[0]])
    editor.restore()
    _assert_identical(model, snapshot)
    assert seen, "the value optimization did not call value_weight_decay"
    for delta, initial_sq, weight, out in seen:
        assert weight == 0.5
        torch.testing.assert_close(out, 0.5 * delta.norm(dim=1) / initial_sq)
