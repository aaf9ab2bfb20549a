"""The default parts' recipe: training only the top blocks, the announced estimate, a quiet first run."""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import pytest
import torch

from serac.counterfactual import CounterfactualModel
from serac.data import generate_synthetic_examples
from serac.offline import MissingDefaultModelError
from serac.serve.towers import TwoTowers, low_rank_update, shared_depth
from serac.training import CounterfactualTrainingArguments, recipe, train_counterfactual_model
from serac.training.loop import freeze_below_top_blocks, transformer_blocks

from .conftest import make_tiny_llama, make_tiny_t5

FAST = {"show_progress": False, "save_steps": 1000, "logging_steps": 1, "eval_steps": 0}


@pytest.fixture(scope="module")
def examples():
    return generate_synthetic_examples(40, seed=3)


def test_transformer_blocks_are_the_decoder_stack(char_tokenizer):
    llama = make_tiny_llama(char_tokenizer)
    assert transformer_blocks(llama) is llama.model.layers
    t5 = make_tiny_t5(char_tokenizer)
    # The decoder's blocks carry cross-attention, so they are the larger stack.
    assert transformer_blocks(t5) is t5.decoder.block


@pytest.mark.parametrize("count", [0, 3])
def test_trainable_blocks_out_of_range_is_refused(char_tokenizer, count):
    with pytest.raises(ValueError, match="trainable_blocks"):
        freeze_below_top_blocks(make_tiny_llama(char_tokenizer), count)


def test_trainable_blocks_argument_is_checked():
    with pytest.raises(ValueError, match="trainable_blocks"):
        CounterfactualTrainingArguments(trainable_blocks=0)


def test_training_the_top_block_leaves_the_rest_untouched(examples, char_tokenizer, tmp_path):
    counterfactual = CounterfactualModel(make_tiny_llama(char_tokenizer, seed=4), char_tokenizer)
    before = {name: p.detach().clone() for name, p in counterfactual.model.named_parameters()}
    arguments = CounterfactualTrainingArguments(
        max_steps=6, batch_size=8, learning_rate=5e-3, eval_generations=0, trainable_blocks=1, **FAST
    )
    trained = train_counterfactual_model(examples, arguments, counterfactual, tmp_path / "cf")
    changed = {n for n, p in trained.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(name.startswith("model.layers.1.") for name in changed)
    assert not any(name.startswith("model.layers.0.") or "embed" in name for name in changed)
    loaded = CounterfactualModel.from_pretrained(tmp_path / "cf")
    for name, parameter in loaded.model.named_parameters():
        assert torch.equal(parameter, dict(trained.model.named_parameters())[name])


def test_low_rank_training_changes_the_top_block_by_low_rank_updates_and_its_rows_share_the_base_layers(
    examples, char_tokenizer, tmp_path
):
    base = make_tiny_llama(char_tokenizer, seed=4)
    counterfactual = CounterfactualModel(copy.deepcopy(base), char_tokenizer)
    arguments = CounterfactualTrainingArguments(
        max_steps=6,
        batch_size=8,
        learning_rate=5e-3,
        eval_generations=0,
        trainable_blocks=1,
        low_rank=2,
        **FAST,
    )
    trained = train_counterfactual_model(examples, arguments, counterfactual, tmp_path / "cf")
    # Saved as a plain checkpoint: the updates folded into the weights, no parameter or hook of their own.
    assert set(trained.model.state_dict()) == set(base.state_dict())
    assert not any(module._forward_hooks for module in trained.model.modules())
    loaded = CounterfactualModel.from_pretrained(tmp_path / "cf").model
    ours = dict(base.named_parameters())
    changed = {name for name, p in loaded.named_parameters() if not torch.equal(ours[name], p)}
    assert changed and all(name.startswith("model.layers.1.") for name in changed)
    assert any(name.endswith("norm.weight") for name in changed)  # norm gains train as they are
    for name, module in loaded.named_modules():
        if isinstance(module, torch.nn.Linear) and f"{name}.weight" in changed:
            down, up = low_rank_update(base.get_submodule(name).weight, module.weight)
            assert down.shape[0] <= 2
            torch.testing.assert_close(base.get_submodule(name).weight + up @ down, module.weight)
    towers = TwoTowers(base, loaded, shared_depth(base, loaded))
    assert towers.depth == 1 and towers.low_rank


def test_low_rank_argument_is_checked():
    with pytest.raises(ValueError, match="low_rank"):
        CounterfactualTrainingArguments(low_rank=0)


def test_the_estimate_scales_the_probed_steps(monkeypatch):
    monkeypatch.setattr(recipe, "_scope_step_seconds", lambda *args: 0.5)
    monkeypatch.setattr(recipe, "_counterfactual_step_seconds", lambda *args: 2.0)
    shipped = recipe.estimate_training_seconds()
    longer = recipe.estimate_training_seconds(replace(recipe.DEFAULT_RECIPE, scope_steps=1250))
    assert longer - shipped == pytest.approx(recipe._SCOPE_STEP_FACTOR * 1000 * 0.5)
    more_counterfactual = recipe.estimate_training_seconds(
        replace(recipe.DEFAULT_RECIPE, counterfactual_steps=180)
    )
    assert more_counterfactual - shipped == pytest.approx(recipe._COUNTERFACTUAL_STEP_FACTOR * 100 * 2.0)
    assert 0 < shipped < 3600


def test_the_probes_time_real_training_steps(tiny_cross_encoder_dir, char_tokenizer, tmp_path):
    small = generate_synthetic_examples(16, seed=1)
    probe = replace(recipe.DEFAULT_RECIPE, counterfactual_blocks=1)
    assert recipe._scope_step_seconds(probe, small, tiny_cross_encoder_dir, 1) > 0
    model_dir = tmp_path / "tiny_llama"
    make_tiny_llama(char_tokenizer, seed=5).save_pretrained(model_dir)
    char_tokenizer.save_pretrained(model_dir)
    assert recipe._counterfactual_step_seconds(probe, small, str(model_dir), 1) > 0


def test_a_first_run_announces_what_it_trains_and_how_long(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SERAC_CACHE", str(tmp_path))
    monkeypatch.setattr(recipe, "estimate_training_seconds", lambda recipe: 312.0)
    trained = []

    def train(target, *, recipe):
        trained.append(recipe)
        (target / "serac_config.json").parent.mkdir(parents=True)
        (target / "serac_config.json").write_text("{}")
        return target

    monkeypatch.setattr(recipe, "train_default_parts", train)
    with pytest.raises(MissingDefaultModelError):
        recipe.default_parts_dir(train_if_missing=False)
    folder = recipe.default_parts_dir()
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert "scope classifier (250 steps)" in line and "counterfactual model (80 steps)" in line
    assert str(folder) in line and "About 5 min on this machine." in line
    assert trained == [recipe.DEFAULT_RECIPE]
    # The second call finds the folder: no announcement, no training.
    assert recipe.default_parts_dir() == folder and capsys.readouterr().err == "" and len(trained) == 1


@pytest.mark.parametrize("verbose", [False, True])
def test_the_quickstart_logs_training_details_only_when_asked(verbose):
    import subprocess
    import sys

    # The quickstart's own process (pytest's logging would hide what its logging set-up does).
    code = (
        "import logging, sys\n"
        "import serac.quickstart as quickstart\n"
        "def from_defaults():\n"
        "    logging.getLogger('serac.training.scope').info('Scope classifier: 58302 training pairs')\n"
        "    logging.getLogger('serac.training.scope').warning('a warning')\n"
        "    raise SystemExit(3)\n"
        "quickstart.EditableModel.from_defaults = staticmethod(from_defaults)\n"
        "quickstart.main(sys.argv[1:])\n"
    )
    arguments = ["--verbose"] if verbose else []
    result = subprocess.run(
        [sys.executable, "-c", code, *arguments], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stderr
    assert "a warning" in result.stderr
    assert ("training pairs" in result.stderr) == verbose
    assert result.stdout == ""


def test_library_bars_are_off_while_the_default_parts_train_and_back_after():
    import datasets
    import transformers

    assert datasets.is_progress_bar_enabled() and transformers.utils.logging.is_progress_bar_enabled()
    with recipe._quiet_libraries():
        assert not datasets.is_progress_bar_enabled()
        assert not transformers.utils.logging.is_progress_bar_enabled()
    assert datasets.is_progress_bar_enabled() and transformers.utils.logging.is_progress_bar_enabled()


def test_the_scope_classifier_trains_on_open_prompts_the_counterfactual_model_does_not():
    from serac.data import counterfactual_pairs, scope_pairs

    shipped = recipe.default_training_examples(40)
    without = recipe.default_training_examples(
        40, recipe=replace(recipe.DEFAULT_RECIPE, indirect_phrasings=0)
    )
    open_prompts = [q.text for e in shipped for q in e.in_scope if q.kind == "generation"]
    assert len(open_prompts) == 2 * len(shipped)
    assert not any(q.kind == "generation" for e in without for q in e.in_scope)
    scope = scope_pairs(shipped, seed=0)
    assert set(open_prompts) <= {q for q, label in zip(scope["query"], scope["label"], strict=True) if label}
    options = recipe.DEFAULT_RECIPE.counterfactual_arguments(show_progress=False).pair_options()
    assert (
        counterfactual_pairs(shipped, seed=0, **options).to_dict()
        == counterfactual_pairs(without, seed=0, **options).to_dict()
    )


def test_a_probe_step_slowed_by_other_work_does_not_count():
    layer = torch.nn.Linear(4, 1)
    calls = []

    def loss():
        calls.append(None)
        if len(calls) == 3:  # the second timed step: the machine was busy with something else
            time.sleep(0.5)
        return layer(torch.ones(2, 4)).sum()

    assert recipe._timed_steps(layer, loss, 1e-3, probe_steps=3) < 0.1
    assert len(calls) == 4
