"""Training of the scope classifier and the counterfactual model, on tiny models built from configs."""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter

import numpy as np
import pytest
import torch

from serac import Edit
from serac.counterfactual import CounterfactualModel
from serac.data import generate_synthetic_examples
from serac.modeling import EditableModel
from serac.scope import CrossEncoderScopeClassifier, load_scope_classifier
from serac.training import (
    CHECKPOINT_FOLDER,
    TRAINING_REPORT_NAME,
    CounterfactualTrainingArguments,
    ScopeTrainingArguments,
    choose_retrieval_threshold,
    choose_threshold,
    split_examples,
    train_counterfactual_model,
    train_scope_classifier,
)
from serac.training.cli import main

from .conftest import make_tiny_llama, make_tiny_t5

FAST = {"show_progress": False, "logging_steps": 2, "eval_steps": 0, "save_steps": 100}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models train fastest on one thread; extra threads only contend on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class HashEmbedder:
    """A deterministic bag-of-words sentence embedder (texts that share words are close); ``encoded`` counts
    how often each text was embedded."""

    def __init__(self):
        self.encoded = Counter()

    def encode(self, texts, **kwargs):
        self.encoded.update(texts)
        vectors = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                vectors[row, zlib.crc32(word.encode()) % 64] += 1.0
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


@pytest.fixture(scope="session")
def examples():
    return generate_synthetic_examples(40, seed=3)


@pytest.fixture(scope="session")
def scope_examples():
    # Few edits and two in-scope queries each: a two-layer cross-encoder from scratch can fit them in 40 steps.
    return generate_synthetic_examples(16, seed=3)


def scope_arguments(cross_encoder_dir, **overrides):
    values = {
        "cross_encoder_name_or_path": cross_encoder_dir,
        "max_steps": 40,
        "batch_size": 16,
        "learning_rate": 5e-3,
        "max_length": 64,
        "max_positives_per_edit": 2,
        "mined_negatives_per_edit": 1,
        "validation_fraction": 0.25,
        **FAST,
    }
    values.update(overrides)
    return ScopeTrainingArguments(**values)


def report(directory):
    return json.loads((directory / TRAINING_REPORT_NAME).read_text())


def mean_loss(history, first: bool, count: int = 3):
    losses = [loss for _, loss in history["loss"]]
    return float(np.mean(losses[:count] if first else losses[-count:]))


# -------------------------------------------------------------------------------------- thresholds


def test_choose_threshold_strategies():
    scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05]
    labels = [1, 1, 1, 0, 1, 0, 1, 0, 0, 0]
    best = choose_threshold(scores, labels, strategy="f_beta", beta=1.0)
    assert best.threshold == pytest.approx(0.25)  # all 5 positives in, 2 of 5 negatives too: F1 0.83
    assert (best.recall, best.false_positive_rate) == (1.0, 0.4)
    precise = choose_threshold(scores, labels, strategy="f_beta", beta=0.25)
    assert precise.threshold == pytest.approx(0.75) and precise.false_positive_rate == 0.0
    bounded = choose_threshold(scores, labels, strategy="false_positive_rate", target_false_positive_rate=0.2)
    assert bounded.threshold == pytest.approx(0.5) and bounded.false_positive_rate == pytest.approx(0.2)
    with pytest.raises(ValueError, match="positives and negatives"):
        choose_threshold([0.2, 0.3], [0, 0])
    with pytest.raises(ValueError):
        choose_threshold([0.2, 0.3], [0, 2])
    assert choose_retrieval_threshold([0.9, 0.8, 0.5, 0.7], quantile=0.0, margin=0.1) == pytest.approx(0.4)
    assert choose_retrieval_threshold([0.1], margin=2.0) == -1.0


def test_arguments_validate():
    with pytest.raises(ValueError, match="max_steps"):
        ScopeTrainingArguments(max_steps=0)
    with pytest.raises(ValueError, match="threshold_strategy"):
        ScopeTrainingArguments(threshold_strategy="median")
    with pytest.raises(ValueError, match="kinds"):
        CounterfactualTrainingArguments(kinds=("edit", "rumour"))
    with pytest.raises(ValueError, match="input_template"):
        CounterfactualTrainingArguments(input_template="{edit} only")
    assert CounterfactualTrainingArguments(kinds="edit,yes_no").kinds == ("edit", "yes_no")
    with pytest.raises(TypeError):
        train_scope_classifier([], CounterfactualTrainingArguments())  # type: ignore[arg-type]


def test_split_keeps_cases_together(examples):
    from serac.data import load_mquake

    train, held_out = split_examples(examples, 0.25, seed=1)
    assert len(held_out) == 10 and len(train) == 30
    assert split_examples(examples, 0.25, seed=1) == (train, held_out)
    mquake = load_mquake("tests/fixtures/mquake_sample.json")
    for seed in range(6):
        train, held_out = split_examples(mquake, 0.5, seed=seed)
        assert {e.case_id for e in train}.isdisjoint({e.case_id for e in held_out})
    with pytest.raises(ValueError, match="at least 2"):
        split_examples(examples[:1], 0.5, seed=0)


# ------------------------------------------------------------------------------------ scope classifier


def test_scope_training_lowers_the_loss_and_saves_thresholds(
    scope_examples, tiny_cross_encoder_dir, tmp_path
):
    output = tmp_path / "scope"
    arguments = scope_arguments(tiny_cross_encoder_dir, similarity_weight=2.0, similarity_center=0.5)
    embedder = HashEmbedder()
    classifier = train_scope_classifier(scope_examples, arguments, output, embedder=embedder)
    assert isinstance(classifier, CrossEncoderScopeClassifier)
    # Mining and the retrieval threshold read the same held-out texts: each is embedded once.
    assert embedder.encoded and max(embedder.encoded.values()) == 1
    assert (classifier.config.similarity_weight, classifier.config.similarity_center) == (2.0, 0.5)
    saved = report(output)
    assert mean_loss(saved["loss_history"], first=False) < mean_loss(saved["loss_history"], first=True) - 0.2
    assert saved["global_step"] == 40
    # Both thresholds come from the held-out data, not from defaults.
    assert classifier.config.threshold == saved["threshold_choice"]["threshold"]
    assert classifier.config.retrieval_threshold == saved["retrieval_threshold"]
    assert classifier.config.retrieval_threshold < saved["held_out_in_scope_similarity"]["min"]
    assert not (output / CHECKPOINT_FOLDER).exists()
    loaded = load_scope_classifier(output)
    assert loaded.config == classifier.config
    pairs = (
        ["Ada Rell plays the harp", "Ada Rell plays the harp"],
        ["What does Ada Rell play?", "Who is Bo?"],
    )
    np.testing.assert_allclose(loaded.score_pairs(*pairs), classifier.score_pairs(*pairs), atol=1e-6)


def test_scope_loss_in_length_buckets_is_the_batchs_loss_with_less_padding(tiny_cross_encoder_dir):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from serac.training.scope import length_bucketed_loss

    cross_encoder = CrossEncoder(tiny_cross_encoder_dir, num_labels=1, max_length=64)
    model = cross_encoder.model
    model.eval()  # no dropout: both losses see the same network
    edits = ["Ada Rell plays the harp", "Bo Tam was born in Lyon", "The capital of Vell is Orsk"] * 3
    queries = [
        "What does she play?",
        "Which city was Bo Tam born in, according to the records that the town hall of Lyon keeps?",
        "Capital of Vell?",
        "Who is Bo?",
        "Is Orsk, a city on the river that runs from the northern hills to the sea, the capital of Vell?",
        "Where?",
        "What instrument does Ada Rell, who studied in Vienna and Paris, play in the orchestra?",
        "Bo Tam's birthplace?",
        "Orsk?",
    ]
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    widths = []
    model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: widths.append(tuple(args[0].shape))
    )

    def loss_and_gradients(loss):
        model.zero_grad()
        value = loss([edits, queries], labels)
        value.backward()
        return value.detach(), {
            name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None
        }

    plain, plain_gradients = loss_and_gradients(BinaryCrossEntropyLoss(cross_encoder))
    ((rows, longest),) = widths
    widths.clear()
    bucketed, bucketed_gradients = loss_and_gradients(length_bucketed_loss(cross_encoder, 3))
    assert [rows for rows, _ in widths] == [3, 3, 3]
    assert sum(rows * width for rows, width in widths) < 0.75 * 9 * longest
    torch.testing.assert_close(bucketed, plain, atol=1e-6, rtol=1e-5)
    assert bucketed_gradients.keys() == plain_gradients.keys()
    for name, gradient in plain_gradients.items():
        torch.testing.assert_close(bucketed_gradients[name], gradient, atol=1e-6, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="length_buckets"):
        ScopeTrainingArguments(length_buckets=0)


def test_memoized_embedder_encodes_each_text_once_and_gives_the_embedders_vectors(embedder):
    from serac.offline import MemoizedEmbedder, embed

    counted = Counter()

    class Counting:
        def encode(self, texts, **kwargs):
            counted.update((text, kwargs.get("normalize_embeddings")) for text in texts)
            return embedder.encode(texts, **kwargs)

        def __getattr__(self, name):
            return getattr(embedder, name)

    memo = MemoizedEmbedder(Counting())
    texts = ["Who wrote Hamlet?", "Ada Rell plays the harp", "Who wrote Hamlet?"]
    first = embed(memo, texts)
    again = embed(memo, ["Ada Rell plays the harp", "Where is Lyon?"])
    raw = memo.encode(texts[:1])  # not normalized: a vector of its own
    assert counted == Counter(
        {
            ("Who wrote Hamlet?", True): 1,
            ("Ada Rell plays the harp", True): 1,
            ("Where is Lyon?", True): 1,
            ("Who wrote Hamlet?", False): 1,
        }
    )
    expected = embed(embedder, ["Who wrote Hamlet?", "Ada Rell plays the harp", "Where is Lyon?"])
    np.testing.assert_allclose(first, expected[[0, 1, 0]], atol=1e-5)
    np.testing.assert_allclose(again, expected[[1, 2]], atol=1e-5)
    np.testing.assert_allclose(raw, embedder.encode(texts[:1]), atol=1e-5)
    assert memo.get_embedding_dimension() == 384  # the rest is the wrapped embedder's


def test_scope_training_resumes_after_a_crash(scope_examples, tiny_cross_encoder_dir, tmp_path, monkeypatch):
    from transformers import Trainer

    arguments = scope_arguments(
        tiny_cross_encoder_dir, max_steps=10, save_steps=4, mined_negatives_per_edit=0
    )
    reference = train_scope_classifier(
        scope_examples, arguments, tmp_path / "reference", embedder=HashEmbedder()
    )

    original_step = Trainer.training_step
    calls = {"count": 0}

    def crashing_step(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 7:
            raise RuntimeError("power cut")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", crashing_step)
    output = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="power cut"):
        train_scope_classifier(scope_examples, arguments, output, embedder=HashEmbedder())
    assert (output / CHECKPOINT_FOLDER / "checkpoint-4").is_dir()
    calls["count"] = -100  # no more crashes
    resumed = train_scope_classifier(scope_examples, arguments, output, embedder=HashEmbedder())
    assert calls["count"] == -100 + 6  # steps 5..10 only
    pairs = (["Ada Rell plays the harp"] * 2, ["What does Ada Rell play?", "Who is Bo?"])
    np.testing.assert_allclose(resumed.score_pairs(*pairs), reference.score_pairs(*pairs), atol=1e-5)


def test_scope_training_of_the_top_block_trains_the_head_and_leaves_the_rest_untouched(
    scope_examples, tiny_cross_encoder_dir, tmp_path
):
    from transformers import AutoModelForSequenceClassification

    before = dict(
        AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder_dir).named_parameters()
    )
    arguments = scope_arguments(tiny_cross_encoder_dir, max_steps=8, trainable_blocks=1)
    classifier = train_scope_classifier(
        scope_examples, arguments, tmp_path / "scope", embedder=HashEmbedder()
    )
    after = dict(classifier.cross_encoder.model.named_parameters())
    changed = {name for name, parameter in after.items() if not torch.equal(before[name], parameter)}
    assert any(name.startswith("bert.encoder.layer.1.") for name in changed)
    assert any(name.startswith("classifier.") for name in changed)  # the head learns with the top block
    assert all(name.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")) for name in changed)
    with pytest.raises(ValueError, match="trainable_blocks"):
        ScopeTrainingArguments(trainable_blocks=0)


# -------------------------------------------------------------------------------- counterfactual model


def test_answer_token_loss_is_the_models_loss_with_the_head_run_on_labelled_tokens_only(
    examples, char_tokenizer
):
    from serac.training.counterfactual import answer_token_loss

    counterfactual = CounterfactualModel(make_tiny_llama(char_tokenizer, seed=4), char_tokenizer)
    model = counterfactual.model
    rows = [
        (example.edit, query.text, example.edit.target)
        for example in examples[:6]
        for query in example.in_scope
    ]
    features = counterfactual.training_features(*map(list, zip(*rows[:8], strict=True)))
    labelled = int((features["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < features["labels"][:, 1:].numel() // 2  # the prompt is most of each row

    head_rows = []
    model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: head_rows.append(output.shape[:-1].numel())
    )
    expected = model(**features).loss
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    loss = answer_token_loss(model, features)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert head_rows == [features["input_ids"].numel(), labelled]
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-5)
    # The trainer's form: the labelled tokens' sum over a count it gives.
    summed = answer_token_loss(model, features, num_items_in_batch=torch.tensor(2 * labelled))
    torch.testing.assert_close(summed, expected.detach() / 2, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("make_model", [make_tiny_llama, make_tiny_t5], ids=["causal", "seq2seq"])
def test_counterfactual_training_computes_a_causal_models_loss_on_its_answer_tokens(
    make_model, examples, char_tokenizer, tmp_path, monkeypatch
):
    from serac.training import counterfactual as training

    calls = []
    loss = training.answer_token_loss
    monkeypatch.setattr(training, "answer_token_loss", lambda *args: calls.append(1) or loss(*args))
    counterfactual = CounterfactualModel(make_model(char_tokenizer, seed=4), char_tokenizer)
    arguments = CounterfactualTrainingArguments(max_steps=3, batch_size=4, eval_generations=0, **FAST)
    train_counterfactual_model(examples, arguments, counterfactual, tmp_path / "cf")
    assert len(calls) == (3 if make_model is make_tiny_llama else 0)  # a seq2seq model keeps its own loss


@pytest.mark.parametrize("make_model", [make_tiny_llama, make_tiny_t5], ids=["causal", "seq2seq"])
def test_counterfactual_training_lowers_the_loss(make_model, examples, char_tokenizer, tmp_path):
    counterfactual = CounterfactualModel(make_model(char_tokenizer, seed=4), char_tokenizer)
    before = {name: p.detach().clone() for name, p in counterfactual.model.named_parameters()}
    arguments = CounterfactualTrainingArguments(
        max_steps=16, batch_size=8, learning_rate=5e-3, eval_generations=4, **FAST
    )
    trained = train_counterfactual_model(examples, arguments, counterfactual, tmp_path / "cf")
    assert trained is counterfactual and not trained.model.training
    saved = report(tmp_path / "cf")
    assert mean_loss(saved["loss_history"], first=False) < mean_loss(saved["loss_history"], first=True) - 0.3
    assert saved["held_out_metrics"]["pairs"] == 4
    assert any(not torch.equal(before[n], p) for n, p in trained.model.named_parameters())
    loaded = CounterfactualModel.from_pretrained(tmp_path / "cf")
    edit = Edit(prompt="{} plays the", subject="Ada Rell", target="harp")
    assert loaded.generate([edit], ["What does Ada Rell play?"], max_new_tokens=4) == trained.generate(
        [edit], ["What does Ada Rell play?"], max_new_tokens=4
    )


# ------------------------------------------------------------------------------------ CLI round trip


def test_cli_writes_a_directory_that_from_pretrained_loads(
    examples, tiny_cross_encoder_dir, char_tokenizer, tmp_path, monkeypatch
):
    import serac.offline

    model_dir = tmp_path / "tiny_llama"
    make_tiny_llama(char_tokenizer, seed=5).save_pretrained(model_dir)
    char_tokenizer.save_pretrained(model_dir)
    # The CLI loads the edit store's embedder by name; a hashing embedder keeps this test fast.
    monkeypatch.setattr(serac.offline, "load_embedder", lambda name_or_path=None, **kwargs: HashEmbedder())
    output = tmp_path / "editor"
    common = [
        "--output-dir",
        str(output),
        "--data",
        "synthetic:30",
        "--max-steps",
        "4",
        "--seed",
        "1",
        "--no-progress",
    ]
    status = main(
        [*common, "--parts", "scope", "--cross-encoder", tiny_cross_encoder_dir, "--scope-max-length", "64",
         "--scope-batch-size", "8", "--scope-eval-steps", "0"]
    )  # fmt: skip
    assert status == 0 and not (output / "serac_config.json").exists()  # the counterfactual model is missing
    scope_report = output / "scope_classifier" / TRAINING_REPORT_NAME
    written = scope_report.stat().st_mtime_ns
    assert main(
        [*common, "--parts", "scope", "--cross-encoder", tiny_cross_encoder_dir, "--scope-max-length", "64",
         "--scope-batch-size", "8", "--scope-eval-steps", "0"]
    ) == 0  # fmt: skip
    assert scope_report.stat().st_mtime_ns == written  # same arguments and data: not trained again
    status = main(
        [*common, "--parts", "counterfactual", "--base-model", str(model_dir), "--counterfactual-batch-size", "4",
         "--counterfactual-eval-generations", "2", "--counterfactual-kinds", "edit,yes_no"]
    )  # fmt: skip
    assert status == 0
    assert json.loads((output / "serac_config.json").read_text())["base_model_name_or_path"] == str(model_dir)
    assert report(output / "counterfactual_model")["arguments"]["kinds"] == ["edit", "yes_no"]

    base = make_tiny_llama(char_tokenizer, seed=5)
    editor = EditableModel.from_pretrained(base, output, tokenizer=char_tokenizer, embedder=HashEmbedder())
    scope_config = report(output / "scope_classifier")
    assert editor.scope_classifier.config.threshold == scope_config["threshold_choice"]["threshold"]
    assert isinstance(editor.counterfactual_model.model, type(base))
    (edit_id,) = editor.edit([Edit(prompt="{} plays the", subject="Ada Rell", target="harp")])
    decisions = editor.route(["Ada Rell plays the", "Why is the sky blue?"])
    scores = editor.scope_classifier.score_pairs(["Ada Rell plays the harp"], ["Ada Rell plays the"])
    assert decisions[0].in_scope == bool(scores[0] >= editor.scope_classifier.config.threshold)


def test_cli_rejects_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--output-dir", str(tmp_path), "--parts", "scope,memory"])
    assert "--parts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--output-dir", str(tmp_path), "--scope-threshold-strategy", "median"])
    with pytest.raises(SystemExit):
        main(["--output-dir", str(tmp_path), "--data", "wikidata:x.json"])


def test_training_shows_a_progress_bar_and_no_log_dicts(examples, char_tokenizer, tmp_path, capfd):
    counterfactual = CounterfactualModel(make_tiny_llama(char_tokenizer, seed=4), char_tokenizer)
    shown = {**FAST, "show_progress": True, "logging_steps": 1}
    arguments = CounterfactualTrainingArguments(max_steps=3, batch_size=4, eval_generations=0, **shown)
    train_counterfactual_model(examples, arguments, counterfactual, tmp_path / "cf")
    out, err = capfd.readouterr()
    assert "{'loss'" not in out and "{'loss'" not in err
    assert "3/3" in err  # the bar itself, on standard error
