"""MEND and SaLEM on a tiny Llama: the update's structure, exact restore, training, saving, resuming."""

from __future__ import annotations

import json

import pytest
import torch

from serac.editors import get_editor
from serac.editors.mend import MENDEditor
from serac.editors.mend.network import (
    MENDConfig,
    MENDNetwork,
    edit_batch,
    gradient_factors,
    matrix_names,
)
from serac.editors.mend.training import (
    CHECKPOINT_FOLDER,
    MENDTrainingArguments,
    TrainingPairs,
    load_training_examples,
    train_mend,
    training_losses,
    training_pairs,
)
from serac.editors.salem.editor import SaLEMEditor, SaLEMEditorConfig, module_templates, salient_layers
from serac.editors.saliency import layer_saliency
from serac.edits import Edit

PAIRS = [
    TrainingPairs(("Alice lives in", "Paris"), (("Where does Alice live?", "Paris"),), ("Bob works as a",)),
    TrainingPairs(("Carol plays", "chess"), (("Which game does Carol play?", "chess"),), ("Dan is from",)),
    TrainingPairs(("Erin speaks", "Dutch"), (("Which language does Erin speak?", "Dutch"),), ("Fay owns a",)),
    TrainingPairs(("Gus drives a", "truck"), (("What does Gus drive?", "truck"),), ("Hal eats",)),
]
EDIT = Edit(prompt="The sky is", target="green")


def tiny_arguments(**overrides) -> MENDTrainingArguments:
    values = {"num_steps": 4, "batch_size": 2, "checkpoint_every": 1, "learning_rate": 1e-2, "seed": 0}
    return MENDTrainingArguments(**{**values, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_llama, char_tokenizer, tmp_path_factory):
    """A MEND network for both blocks of the tiny Llama, trained for 4 steps and saved."""
    directory = tmp_path_factory.mktemp("mend")
    config = MENDConfig(layers=[0, 1], rank=8)
    network = train_mend(
        tiny_llama, char_tokenizer, config, tiny_arguments(), directory, pairs=PAIRS, show_progress=False
    )
    return network, directory


def test_the_update_is_a_sum_of_rank_one_terms_one_per_token(tiny_llama, char_tokenizer, trained):
    network, _ = trained
    names = matrix_names(tiny_llama, network.config)
    batch = edit_batch(char_tokenizer, [(EDIT.query, EDIT.target)], torch.device("cpu"))
    factors, _ = gradient_factors(tiny_llama, batch, names)
    tokens = int(batch.attention_mask.sum())
    with torch.no_grad():
        for index, (u, delta) in enumerate(factors):
            assert u.shape[0] == delta.shape[0] == tokens
            u_tilde, delta_tilde = network.pseudo_factors(index, u, delta)
            per_token = [
                -network.edit_lrs[index] * torch.outer(delta_tilde[t], u_tilde[t]) for t in range(tokens)
            ]
            assert all(int(torch.linalg.matrix_rank(term)) <= 1 for term in per_token)
            update = network.update(index, u, delta)
            torch.testing.assert_close(update, torch.stack(per_token).sum(0), rtol=1e-4, atol=1e-7)
            assert int(torch.linalg.matrix_rank(update)) <= tokens
            assert update.shape == (delta.shape[1], u.shape[1])


def test_apply_changes_only_the_edited_matrices_and_restore_is_bit_identical(
    tiny_llama, char_tokenizer, trained
):
    _, directory = trained
    before = {name: value.clone() for name, value in tiny_llama.state_dict().items()}
    editor = get_editor("mend", editor_path=str(directory))
    editor.apply(tiny_llama, char_tokenizer, [EDIT, Edit(prompt="Grass is", target="blue")])
    editor.apply(tiny_llama, char_tokenizer, [Edit(prompt="Snow is", target="black")])  # sequential
    changed = {
        name for name, value in tiny_llama.state_dict().items() if not torch.equal(value, before[name])
    }
    assert (
        changed
        == set(editor.edited_parameters)
        == {
            f"model.layers.{layer}.mlp.{projection}.weight"
            for layer in (0, 1)
            for projection in ("down_proj", "up_proj")
        }
    )
    editor.restore()
    assert all(torch.equal(value, before[name]) for name, value in tiny_llama.state_dict().items())


def test_one_training_step_reduces_the_edit_loss(tiny_llama, char_tokenizer):
    torch.manual_seed(0)
    network = MENDNetwork.for_model(tiny_llama, MENDConfig(layers=[1], rank=8, edit_lr_init=1e-3))
    names = matrix_names(tiny_llama, network.config)
    edits = [pair.edit for pair in PAIRS]
    rephrasings = [pair.in_scope[0] for pair in PAIRS]
    unrelated = [pair.out_of_scope[0] for pair in PAIRS]
    with torch.no_grad():  # gathers the normalization statistics, then freezes them
        training_losses(tiny_llama, char_tokenizer, network, names, edits, rephrasings, unrelated, 32)
    network.eval()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    loss, locality, _ = training_losses(
        tiny_llama, char_tokenizer, network, names, edits, rephrasings, unrelated, 32
    )
    (loss + locality).backward()
    optimizer.step()
    with torch.no_grad():
        after, _, _ = training_losses(
            tiny_llama, char_tokenizer, network, names, edits, rephrasings, unrelated, 32
        )
    assert float(after) < float(loss.detach())


def test_a_saved_editor_reproduces_the_same_update(tiny_llama, char_tokenizer, trained):
    network, directory = trained
    loaded = MENDNetwork.from_pretrained(directory, tiny_llama).eval()
    assert loaded.config == network.config
    names = matrix_names(tiny_llama, network.config)
    batch = edit_batch(char_tokenizer, [(EDIT.query, EDIT.target)], torch.device("cpu"))
    factors, _ = gradient_factors(tiny_llama, batch, names)
    with torch.no_grad():
        for index, (u, delta) in enumerate(factors):
            assert torch.equal(network.update(index, u, delta), loaded.update(index, u, delta))
    report = json.loads((directory / "training_report.json").read_text())
    assert report["steps"] == 4 and len(report["history"]) == 4


def test_an_interrupted_training_resumes_from_its_checkpoint(tiny_llama, char_tokenizer, trained, tmp_path):
    network, _ = trained
    config = MENDConfig(layers=[0, 1], rank=8)
    train_mend(
        tiny_llama,
        char_tokenizer,
        config,
        tiny_arguments(),
        tmp_path,
        pairs=PAIRS,
        show_progress=False,
        stop_after=2,
    )
    state = json.loads((tmp_path / CHECKPOINT_FOLDER / "trainer_state.json").read_text())
    assert state["step"] == 2 and not (tmp_path / "mend_config.json").exists()
    resumed = train_mend(
        tiny_llama, char_tokenizer, config, tiny_arguments(), tmp_path, pairs=PAIRS, show_progress=False
    )
    report = json.loads((tmp_path / "training_report.json").read_text())
    assert report["resumed_from_step"] == 2 and [entry["step"] for entry in report["history"]] == [1, 2, 3, 4]
    uninterrupted, resumed_state = network.state_dict(), resumed.state_dict()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=1e-5, atol=1e-7)


def test_salem_edits_only_the_most_salient_block(tiny_llama, char_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("SERAC_CACHE", str(tmp_path))
    settings = {
        "train_data": ["synthetic:8"],
        "saliency_edits": 4,
        "num_steps": 2,
        "batch_size": 2,
        "rank": 4,
        "num_salient_layers": 1,
    }
    editor = get_editor("salem", **settings)
    assert isinstance(editor, SaLEMEditor) and isinstance(editor, MENDEditor)
    before = {name: value.clone() for name, value in tiny_llama.state_dict().items()}
    editor.apply(tiny_llama, char_tokenizer, [EDIT])
    profile = editor.saliency_profile
    assert profile is not None and len(profile) == 2
    chosen = max(range(2), key=lambda layer: (profile[layer], -layer))
    assert editor.last_stats["layers"] == [chosen]
    assert all(name.startswith(f"model.layers.{chosen}.mlp.") for name in editor.edited_parameters)
    editor.restore()
    assert all(torch.equal(value, before[name]) for name, value in tiny_llama.state_dict().items())
    # Trained once and cached: a second editor with the same settings loads it instead of training again.
    assert any(path.name.startswith("mend-") for path in (tmp_path / "parts").iterdir())
    again = get_editor("salem", **settings)
    network = again.load_network(tiny_llama, char_tokenizer)
    assert network.config.layers == [chosen]


def test_saliency_averages_columns_of_every_matrix_of_a_block(tiny_llama, char_tokenizer):
    templates = module_templates(tiny_llama, ["down_proj", "up_proj"])
    both = layer_saliency(tiny_llama, char_tokenizer, [EDIT], templates)
    down = layer_saliency(tiny_llama, char_tokenizer, [EDIT], templates[0])
    up = layer_saliency(tiny_llama, char_tokenizer, [EDIT], templates[1])
    assert both == pytest.approx([(d + u) / 2 for d, u in zip(down, up, strict=True)])


def test_bad_input_raises_before_anything_changes(tiny_llama, char_tokenizer, trained, tmp_path):
    _, directory = trained
    with pytest.raises(ValueError, match="rank"):
        get_editor("mend", rank=0)
    with pytest.raises(TypeError, match="layers"):
        get_editor("mend", layers="last")
    with pytest.raises(ValueError, match="projections"):
        get_editor("mend", projections=["attention"])
    with pytest.raises(ValueError, match="num_steps"):
        MENDTrainingArguments(num_steps=0)
    with pytest.raises(ValueError, match="num_salient_layers"):
        get_editor("salem", num_salient_layers=0)
    before = {name: value.clone() for name, value in tiny_llama.state_dict().items()}
    editor = get_editor("mend", editor_path=str(directory))
    with pytest.raises(ValueError, match="statement"):
        editor.apply(tiny_llama, char_tokenizer, [Edit.from_statement("The sky is green.")])
    with pytest.raises(TypeError):
        editor.apply(tiny_llama, char_tokenizer, ["The sky is green"])
    with pytest.raises(FileNotFoundError, match="not a trained MEND editor"):
        get_editor("mend", editor_path=str(tmp_path)).apply(tiny_llama, char_tokenizer, [EDIT])
    with pytest.raises(ValueError, match="out of range"):
        MENDNetwork.for_model(tiny_llama, MENDConfig(layers=[5]))
    assert all(torch.equal(value, before[name]) for name, value in tiny_llama.state_dict().items())


def test_salem_chooses_among_the_candidate_blocks_only(tiny_llama, char_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("SERAC_CACHE", str(tmp_path))
    settings = {"train_data": ["synthetic:8"], "saliency_edits": 4}
    profile = salient_layers(tiny_llama, char_tokenizer, SaLEMEditorConfig(**settings))[1]
    least = min(range(2), key=lambda layer: (profile[layer], layer))
    config = SaLEMEditorConfig(**settings, candidate_layers=[least])
    assert salient_layers(tiny_llama, char_tokenizer, config)[0] == [least]
    with pytest.raises(ValueError, match="not blocks of this model"):
        salient_layers(tiny_llama, char_tokenizer, SaLEMEditorConfig(**settings, candidate_layers=[5]))
    with pytest.raises(ValueError, match="candidate_layers"):
        SaLEMEditorConfig(candidate_layers=[])
    with pytest.raises(ValueError, match="exceeds"):
        SaLEMEditorConfig(candidate_layers=[1], num_salient_layers=2)


def test_easyedit_mend_records_carry_our_training_edits():
    """The faithfulness comparison trains EasyEdit's MEND on exactly the edits ours trains on."""
    from faithfulness import easyedit_mend_records

    records = easyedit_mend_records(["synthetic:40"], seed=0)
    pairs = training_pairs(load_training_examples("synthetic:40", seed=0))
    assert [(r["prompt"], r["target_new"]) for r in records] == [pair.edit for pair in pairs]
    for record, pair in zip(records, pairs, strict=True):
        assert record["rephrase_prompt"] in {query for query, _ in pair.in_scope} | {pair.edit[0]}
        assert record["locality_prompt"] != record["prompt"] and record["locality_ground_truth"]
    assert records == easyedit_mend_records(["synthetic:40"], seed=0)
