"""Knowledge neurons and KE on tiny Llama models built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serac.data import EditExample, InScopeQuery, OutOfScopeQuery
from serac.editors import available_editors, get_editor
from serac.editors.base import token_ids
from serac.editors.ke import KEEditor
from serac.editors.ke.network import EditPass, KEConfig, KEHypernetwork, hypernetwork_for
from serac.editors.ke.training import KETrainingArguments, train_hypernetwork, training_step
from serac.editors.knowledge_neurons import KNConfig, KnowledgeNeuronsEditor, neuron_attributions
from serac.edits import Edit

from .conftest import make_tiny_llama

EDITS = [
    Edit(prompt="{} is a citizen of", subject="Ellie Kemper", target="Croatia"),
    Edit(prompt="The capital of {} is", subject="France", target="Rome"),
]
KN_FAST = {"layers": (0, 1), "steps": 8, "context_templates": ((3, 2),), "max_neurons": 5}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Models this small gain nothing from a second thread, and on a busy machine its waits dominate.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERAC_CACHE", str(tmp_path_factory.mktemp("serac-cache")))
        yield


@pytest.fixture()
def model(char_tokenizer):
    return make_tiny_llama(char_tokenizer, seed=3).requires_grad_(False)


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_registered():
    assert {"kn", "ke"} <= set(available_editors())
    assert isinstance(get_editor("kn", steps=4), KnowledgeNeuronsEditor)


def test_attribution_is_integrated_gradients(model, char_tokenizer):
    # A louder MLP makes the probability depend visibly on its neurons.
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(30.0)
    ids = token_ids(char_tokenizer, "Paris is in")
    with torch.no_grad():
        target = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    fine = neuron_attributions(model, "model.layers.1.mlp.down_proj", ids, target, steps=400, batch_size=400)
    gap = fine.probability - fine.baseline_probability
    assert abs(gap) > 1e-4
    # Completeness: the attributions add up to the change of the probability along the path.
    assert float(fine.scores.sum()) == pytest.approx(gap, rel=1e-2)
    one_step = neuron_attributions(model, "model.layers.1.mlp.down_proj", ids, target, steps=1)
    # One right-endpoint step is the gradient times the activation, a worse estimate than 400 steps.
    assert abs(float(one_step.scores.sum()) - gap) > abs(float(fine.scores.sum()) - gap)
    # Steps split over batches give the same sums as one batch.
    split = neuron_attributions(model, "model.layers.1.mlp.down_proj", ids, target, steps=400, batch_size=64)
    assert torch.allclose(split.scores, fine.scores, atol=1e-7)


def test_kn_changes_only_the_attributed_value_vectors(model, char_tokenizer):
    before = snapshot(model)
    editor = KnowledgeNeuronsEditor(**KN_FAST)
    editor.apply(model, char_tokenizer, EDITS)
    neurons = {tuple(pair) for found in editor.last_stats["knowledge_neurons"] for pair in found}
    assert neurons, "no knowledge neuron found"
    for name, parameter in model.named_parameters():
        changed = (parameter != before[name]).nonzero().tolist()
        if not changed:
            continue
        layer = int(name.split(".")[2])
        assert name == f"model.layers.{layer}.mlp.down_proj.weight", name
        # weight is [hidden, intermediate]: column j is the value vector of neuron j.
        assert {(layer, column) for _, column in changed} <= neurons
    changed_columns = {
        (layer, column)
        for layer in (0, 1)
        for _, column in (
            model.model.layers[layer].mlp.down_proj.weight
            != before[f"model.layers.{layer}.mlp.down_proj.weight"]
        )
        .nonzero()
        .tolist()
    }
    assert changed_columns == neurons
    editor.restore()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_kn_sequential_edits_restore_bit_identical(model, char_tokenizer):
    before = snapshot(model)
    editor = KnowledgeNeuronsEditor(**KN_FAST)
    for edit in EDITS:
        editor.apply(model, char_tokenizer, [edit])
    assert editor.edited_parameters
    editor.restore()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_kn_moves_the_answer(model, char_tokenizer):
    edit = EDITS[1]
    ids = torch.tensor([token_ids(char_tokenizer, edit.query)])
    new_token = char_tokenizer(" R", add_special_tokens=False)["input_ids"][-1]

    def new_probability():
        with torch.no_grad():
            return float(model(input_ids=ids).logits[0, -1].softmax(-1)[new_token])

    before = new_probability()
    editor = KnowledgeNeuronsEditor(**{**KN_FAST, "insert_scale": 50.0})
    editor.apply(model, char_tokenizer, [Edit(prompt=edit.query, target="R")])
    assert editor.last_stats["neurons"] > 0
    assert new_probability() > before
    editor.restore()


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"steps": 0}, ValueError),
        ({"layers": "1"}, TypeError),
        ({"layers": ()}, ValueError),
        ({"attribution_threshold": 1.5}, ValueError),
        ({"shared_fraction": -0.1}, ValueError),
        ({"insert_scale": -1.0}, ValueError),
        ({"context_templates": ((0, 2),)}, ValueError),
    ],
)
def test_kn_bad_config(overrides, error):
    with pytest.raises(error):
        KNConfig(**overrides)
    with pytest.raises(error):
        get_editor("kn", **overrides)


def test_kn_bad_input_changes_nothing(model, char_tokenizer):
    before = snapshot(model)
    with pytest.raises(ValueError, match="out of range"):
        KnowledgeNeuronsEditor(layers=(7,)).apply(model, char_tokenizer, EDITS)
    with pytest.raises(ValueError, match="statement"):
        KnowledgeNeuronsEditor(**KN_FAST).apply(
            model, char_tokenizer, [Edit.from_statement("Paris is in Italy.")]
        )
    with pytest.raises(TypeError):
        KnowledgeNeuronsEditor(**KN_FAST).apply(model, char_tokenizer, "not edits")
    with pytest.raises(ValueError):
        neuron_attributions(model, "model.layers.1.mlp.down_proj", [1, 2], 3, steps=0)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


# --- KE ---------------------------------------------------------------------------------------------


KE_EXAMPLES = [
    EditExample(
        edit=Edit(prompt="{} is a citizen of", subject="Ellie Kemper", target="Croatia"),
        in_scope=(InScopeQuery("Ellie Kemper's country is", "Croatia"),),
        out_of_scope=(OutOfScopeQuery("The sky is"),),
    ),
    EditExample(
        edit=Edit(prompt="The capital of {} is", subject="France", target="Rome"),
        out_of_scope=(OutOfScopeQuery("Water boils at"),),
    ),
]
KE_TINY = KEConfig(layers=(0, 1), hidden_size=16, initial_step=0.05)


def test_ke_one_training_step_reduces_the_edit_loss(model, char_tokenizer):
    torch.manual_seed(0)
    network = hypernetwork_for(model, KE_TINY)
    edit_pass = EditPass(model, network)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    rows = [("Ellie Kemper is a citizen of", "Croatia")]
    losses = []
    for _ in range(2):
        lagrangian, edit_loss, kl = training_step(
            model, char_tokenizer, edit_pass, rows, "The sky is", 1.0, 1e-3
        )
        losses.append(edit_loss)
        optimizer.zero_grad()
        lagrangian.backward()
        optimizer.step()
    assert losses[1] < losses[0]
    assert kl >= 0


def test_ke_saved_hypernetwork_reproduces_the_update(model, char_tokenizer, tmp_path):
    arguments = KETrainingArguments(config=KE_TINY, num_steps=3, checkpoint_every=1, learning_rate=1e-2)
    folder = train_hypernetwork(
        model, char_tokenizer, KE_EXAMPLES, arguments, tmp_path / "ke", show_progress=False
    )
    before = snapshot(model)
    first = KEEditor(folder)
    first.apply(model, char_tokenizer, EDITS[:1])
    edited = snapshot(model)
    assert first.edited_parameters == [
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ]
    first.restore()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    second = KEEditor(KEHypernetwork.from_pretrained(folder))
    second.apply(model, char_tokenizer, EDITS[:1])
    assert all(torch.equal(p, edited[name]) for name, p in model.named_parameters())
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert changed == second.edited_parameters
    second.restore()


def test_ke_training_resumes_after_a_kill(model, char_tokenizer, tmp_path):
    arguments = KETrainingArguments(config=KE_TINY, num_steps=4, checkpoint_every=1, learning_rate=1e-2)
    straight = train_hypernetwork(
        model, char_tokenizer, KE_EXAMPLES, arguments, tmp_path / "a", show_progress=False
    )

    def kill(step, logs):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_hypernetwork(
            model, char_tokenizer, KE_EXAMPLES, arguments, tmp_path / "b", on_step=kill, show_progress=False
        )
    resumed = train_hypernetwork(
        model, char_tokenizer, KE_EXAMPLES, arguments, tmp_path / "b", show_progress=False
    )
    a = KEHypernetwork.from_pretrained(straight).state_dict()
    b = KEHypernetwork.from_pretrained(resumed).state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    other = KETrainingArguments(config=KE_TINY, num_steps=5, checkpoint_every=1)
    with pytest.raises(ValueError, match="other training arguments"):
        train_hypernetwork(model, char_tokenizer, KE_EXAMPLES, other, tmp_path / "b", show_progress=False)


def test_ke_bad_input(model, char_tokenizer, tmp_path):
    with pytest.raises(TypeError):
        KEConfig(layers="1")
    with pytest.raises(ValueError):
        KEConfig(layers=(1, 1))
    with pytest.raises(ValueError):
        KETrainingArguments(num_steps=0)
    with pytest.raises(TypeError):
        KEEditor(hypernetwork_name_or_path=3)
    with pytest.raises(ValueError):
        KEEditor(hypernetwork_name_or_path=str(tmp_path), training={"num_steps": 2})
    before = snapshot(model)
    with pytest.raises(FileNotFoundError):
        KEEditor(str(tmp_path / "missing")).apply(model, char_tokenizer, EDITS)
    network = hypernetwork_for(model, KE_TINY)
    with pytest.raises(ValueError, match="statement"):
        KEEditor(network).apply(model, char_tokenizer, [Edit.from_statement("Paris is in Italy.")])
    with pytest.raises(ValueError, match="out of range"):
        KEEditor(KEHypernetwork(KEConfig(layers=(5,)), 32, [(32, 64)])).apply(model, char_tokenizer, EDITS)
    with pytest.raises(ValueError, match="no"):
        train_hypernetwork(model, char_tokenizer, [], KETrainingArguments(config=KE_TINY), tmp_path / "x")
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_ke_training_data_is_named_by_specs_and_keys_the_cache():
    from serac.editors.ke.training import training_examples

    assert KETrainingArguments(train_data=["synthetic:10"]).key() != KETrainingArguments().key()
    with pytest.raises(ValueError, match="train_data"):
        KETrainingArguments(train_data=[])
    from serac.data import load_zsre

    zsre = Path(__file__).parent / "fixtures" / "zsre_sample.json"
    examples = training_examples(["synthetic:5", f"zsre:{zsre}"], seed=0)
    with_answer = [e for e in load_zsre(zsre, skip_invalid=True) if e.edit.target]
    assert len(examples) == 5 + len(with_answer) and with_answer
    assert [e.edit for e in examples[5:]] == [e.edit for e in with_answer]
