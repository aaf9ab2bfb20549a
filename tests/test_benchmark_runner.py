"""The benchmark runner end to end on tiny models and tiny invented datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from serac.bench import cli as bench_cli
from serac.bench import config as bench_config
from serac.bench import data as bench_data
from serac.bench import generation as bench_generation
from serac.bench import methods as bench_methods
from serac.bench import runner as bench_runner
from serac.bench.report import markdown_table
from serac.data import generate_synthetic_examples, split_by_subject
from serac.data.loaders import load_counterfact, load_mquake
from serac.edits import Edit, normalize_text
from serac.metrics import top1_correct, top1_hits

from .conftest import make_char_tokenizer, make_tiny_t5

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
MQUAKE = FIXTURES / "mquake_tiny.json"
COUNTERFACT = FIXTURES / "counterfact_tiny.json"
ZSRE = FIXTURES / "zsre_tiny.json"

RUN_METRICS = {
    "efficacy", "efficacy_count", "paraphrase", "paraphrase_count", "locality", "locality_count",
    "portability", "portability_count", "edit_seconds_per_edit", "edit_setup_seconds", "query_ms_p50",
    "query_ms_p95", "query_count",
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The runner makes hundreds of generate() calls on a tiny model: thread synchronization would cost more
    # than the arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- stand-in editors


class _Lookup:
    """What an exact-match cache returns: the new target for an edit's own prompt, the model otherwise."""

    def __init__(self, model: Any, tokenizer: Any, edits: dict[str, str]) -> None:
        self.model, self.tokenizer, self.edits = model, tokenizer, edits

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        query = self.tokenizer.decode(input_ids[0], skip_special_tokens=True)
        target = self.edits.get(normalize_text(query))
        if target is None:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        answer = self.tokenizer(" " + target, add_special_tokens=False, return_tensors="pt").input_ids
        return torch.cat([input_ids, answer], dim=1)


class LookupEditor:
    """A cache-like editor: never touches weights; keeps edits across sequential applies."""

    name: ClassVar[str] = "lookup"
    supports_batch: ClassVar[bool] = True
    supports_sequential: ClassVar[bool] = True

    def __init__(self) -> None:
        self.edits: dict[str, str] = {}
        self.last_stats: dict[str, Any] = {}
        self.apply_sizes: list[int] = []

    def apply(self, model, tokenizer, edits):
        self.apply_sizes.append(len(edits))
        self.edits.update({edit.key: edit.target for edit in edits})
        self.last_stats = {"seconds": 0.0}
        return _Lookup(model, tokenizer, self.edits)

    def restore(self) -> None:
        self.edits = {}


class NoiseEditor:
    """A weight editor stand-in: perturbs the LM head, one edit at a time only (like ROME)."""

    name: ClassVar[str] = "noise"
    supports_batch: ClassVar[bool] = False
    supports_sequential: ClassVar[bool] = True

    def __init__(self, scale: float = 1.0, restores: bool = True) -> None:
        self.scale, self.restores = scale, restores
        self.original: torch.Tensor | None = None
        self.model = None
        self.last_stats: dict[str, Any] = {}
        self.apply_sizes: list[int] = []
        self.restore_calls = 0

    def apply(self, model, tokenizer, edits):
        self.apply_sizes.append(len(edits))
        weight = model.get_output_embeddings().weight
        if self.original is None:
            self.model, self.original = model, weight.detach().clone()
        generator = torch.Generator().manual_seed(len(self.apply_sizes))
        with torch.no_grad():
            weight.add_(self.scale * torch.randn(weight.shape, generator=generator))
        self.last_stats = {"seconds": 0.001, "layer": 1}
        return model

    def restore(self) -> None:
        self.restore_calls += 1
        if self.original is not None and self.restores:
            with torch.no_grad():
                self.model.get_output_embeddings().weight.copy_(self.original)
            self.original = None


@pytest.fixture
def registry(monkeypatch):
    """Registers the stand-in editors under their names; returns the instances the runner created."""
    created: dict[str, list[Any]] = {}
    factories = {"lookup": LookupEditor, "noise": NoiseEditor, "leaky": lambda: NoiseEditor(restores=False)}

    def get_editor(name: str, **hyperparameters: Any):
        editor = factories[name](**hyperparameters)
        created.setdefault(name, []).append(editor)
        return editor

    monkeypatch.setattr(bench_config, "editor_names", lambda: list(factories))
    monkeypatch.setattr(bench_methods, "make_editor", get_editor)
    return created


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, char_tokenizer, tiny_llama) -> Path:
    """The tiny Llama saved like any checkpoint, so ``--model PATH`` loads it the normal way."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.save_pretrained(directory)
    char_tokenizer.save_pretrained(directory)
    return directory


def _tiny_loader(tiny_model_dir: Path):
    from serac.offline import load_base_model

    def load(name_or_path):
        assert name_or_path is None or Path(name_or_path) == tiny_model_dir
        return load_base_model(str(tiny_model_dir))

    return load


def _cli(tmp_path: Path, model_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(model_dir), "--output", str(tmp_path / "out" / "results.json"), "--no-progress",
            "--max-new-tokens", "6", *extra]  # fmt: skip


# ----------------------------------------------------------------------------- end to end


def test_cli_end_to_end_on_mquake(tmp_path, tiny_model_dir, registry, capsys):
    argv = _cli(tmp_path, tiny_model_dir, "--dataset", "mquake", "--data-path", str(MQUAKE),
                "--methods", "base,lookup,noise", "--num-edits", "1,all", "--limit-queries", "0",
                "--editor-hparams", str(_write(tmp_path / "hp.json", {"noise": {"scale": 0.5}})))  # fmt: skip
    assert bench_cli.main(argv) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())

    assert set(result) >= {"config", "runs"}
    assert result["complete"] is True
    config = result["config"]
    assert config["dataset"] == "mquake" and config["methods"] == ["base", "lookup", "noise"]
    assert config["num_edits_run"] == [1, 4]
    assert config["max_edits"]["noise"] == bench_config.DEFAULT_EDITOR_MAX_EDITS
    assert config["editor_hparams"] == {"noise": {"scale": 0.5}}
    assert [(run["method"], run["num_edits"], run["mode"]) for run in result["runs"]] == [
        ("base", 1, "batch"), ("base", 4, "batch"), ("lookup", 1, "batch"), ("lookup", 4, "batch"),
        ("noise", 1, "batch"), ("noise", 4, "batch"),
    ]  # fmt: skip
    for run in result["runs"]:
        metrics = run["metrics"]
        assert set(metrics) >= RUN_METRICS, run["method"]
        for name in ("efficacy", "paraphrase", "locality", "portability"):
            count = metrics[f"{name}_count"]
            assert isinstance(count, int) and count >= 0
            assert (metrics[name] is None) == (count == 0)
        assert metrics["query_count"] == sum(
            metrics[f"{n}_count"] for n in ("efficacy", "paraphrase", "locality", "portability")
        )
        assert metrics["query_ms_p50"] > 0 and metrics["query_ms_p95"] >= metrics["query_ms_p50"]

    runs = {(run["method"], run["num_edits"]): run for run in result["runs"]}
    # The unedited model gives the unedited answers, and the ratio to itself is 1.
    for n in (1, 4):
        base = runs[("base", n)]["metrics"]
        assert base["locality"] == 1.0 and base["locality_count"] > 0
        assert base["edit_seconds_per_edit"] is None
        assert base["query_ms_p50_ratio_to_base"] == 1.0
    # With every edit of every case applied, each case's multi-hop questions are asked.
    assert runs[("base", 4)]["metrics"]["portability_count"] == 4
    assert runs[("base", 4)]["metrics"]["portability_case_count"] == 3
    # Out-of-scope queries with a known answer also say how much the base model knows.
    assert runs[("base", 4)]["metrics"]["out_of_scope_accuracy_count"] > 0
    # The exact-match cache answers the edit prompts, and nothing else changes.
    lookup = runs[("lookup", 4)]["metrics"]
    assert lookup["efficacy"] == 1.0 and lookup["efficacy_count"] == 4
    assert lookup["locality"] == 1.0
    assert lookup["edit_seconds_per_edit"] >= 0
    assert lookup["latency_pairs"] == 10 and runs[("noise", 4)]["metrics"]["latency_pairs"] == 0
    # The 10 timed pairs are spread over the queries, so out-of-scope ones are among them.
    assert 0 < lookup["latency_pairs_out_of_scope"] < 10
    # A batch for an editor without batch editing is applied one edit at a time, and says so.
    assert runs[("noise", 4)]["applied_as"] == "sequential"
    assert registry["noise"][0].apply_sizes == [1, 1, 1, 1, 1]
    assert registry["noise"][0].restore_calls == 2
    assert runs[("noise", 4)]["metrics"]["locality"] < 1.0  # random LM-head noise changes answers

    # Markdown table and plots beside the JSON, and the table on stdout.
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.startswith("| method | mode | edits | efficacy |")
    assert "| lookup | batch | 4 | 1.000 (4) |" in table
    assert table in capsys.readouterr().out
    for metric in ("efficacy", "locality", "portability", "query_ms_p50", "edit_seconds_per_edit"):
        png = tmp_path / "out" / f"results.{metric}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", metric
    assert not list((tmp_path / "out").glob(".*")), "temporary files left behind"


def test_sequential_mode_applies_edits_one_by_one(tmp_path, tiny_model_dir, registry):
    config = bench_config.BenchmarkConfig(dataset="zsre", data_path=str(ZSRE), methods=("lookup",), num_edits=(3,),
                                   mode="sequential", model=str(tiny_model_dir), max_new_tokens=4,
                                   progress=False)  # fmt: skip
    result = bench_runner.run_benchmark(config, model_loader=_tiny_loader(tiny_model_dir))
    (run,) = result["runs"]
    assert run["mode"] == "sequential"
    assert registry["lookup"][0].apply_sizes == [1, 1, 1]
    # Metrics after the last edit: every earlier edit is still in effect.
    assert run["metrics"]["efficacy"] == 1.0 and run["metrics"]["efficacy_count"] == 3
    assert run["metrics"]["paraphrase_count"] == 3 and run["metrics"]["portability"] is None


def test_sequential_settings_continue_one_stream_of_edits(tmp_path, tiny_model_dir, registry):
    # Settings 1, 2 and 4 are points along one sequence: 4 edits applied in all, undone once at the end,
    # also when the cap skips the last setting.
    config = bench_config.BenchmarkConfig(dataset="mquake", data_path=str(MQUAKE), methods=("noise", "lookup"),
                                   num_edits=(1, 2, 4), max_edits={"lookup": 2}, mode="sequential",
                                   limit_queries=2, model=str(tiny_model_dir), max_new_tokens=4,
                                   progress=False)  # fmt: skip
    model, tokenizer = _tiny_loader(tiny_model_dir)(None)
    pristine = bench_runner.weights_fingerprint(model)
    result = bench_runner.run_benchmark(config, model_loader=lambda name: (model, tokenizer))
    noise = registry["noise"][0]
    assert noise.apply_sizes == [1, 1, 1, 1] and noise.restore_calls == 1
    assert bench_runner.weights_fingerprint(model) == pristine
    runs = {(run["method"], run["num_edits"]): run for run in result["runs"]}
    assert [runs[("noise", n)]["continued_from"] for n in (1, 2, 4)] == [0, 1, 2]
    # Edit time accumulates along the stream: the 4-edit run counts all four edits.
    assert runs[("noise", 4)]["editor_stats"]["seconds"] == pytest.approx(0.004)
    assert (
        runs[("noise", 4)]["metrics"]["edit_seconds_total"]
        >= runs[("noise", 2)]["metrics"]["edit_seconds_total"]
    )
    lookup = registry["lookup"][0]
    assert lookup.apply_sizes == [1, 1] and lookup.edits == {}  # capped at 2, then restored
    assert runs[("lookup", 2)]["metrics"]["efficacy"] == 1.0


def test_caps_skip_settings_and_are_reported(tmp_path, tiny_model_dir, registry):
    config = bench_config.BenchmarkConfig(dataset="mquake", data_path=str(MQUAKE), methods=("base", "noise"),
                                   num_edits=(1, 2, 4), max_edits={"noise": 2}, limit_queries=2,
                                   model=str(tiny_model_dir), max_new_tokens=4, progress=False)  # fmt: skip
    result = bench_runner.run_benchmark(config, model_loader=_tiny_loader(tiny_model_dir))
    assert [(run["method"], run["num_edits"]) for run in result["runs"]] == [
        ("base", 1), ("base", 2), ("base", 4), ("noise", 1), ("noise", 2),
    ]  # fmt: skip
    assert result["skipped"] == [
        {"method": "noise", "num_edits": 4, "reason": "above the cap --max-edits noise=2"}
    ]
    assert result["config"]["max_edits"] == {"base": None, "noise": 2}
    for run in result["runs"]:
        assert all(run["metrics"][f"{name}_count"] <= 2 for name in ("efficacy", "paraphrase", "locality"))
    assert "Skipped: noise at 4 edits" in markdown_table(result)


def test_weights_left_edited_stop_the_benchmark(tmp_path, tiny_model_dir, registry, char_tokenizer):
    config = bench_config.BenchmarkConfig(dataset="zsre", data_path=str(ZSRE), methods=("leaky", "base"), num_edits=(1,),
                                   model=str(tiny_model_dir), max_new_tokens=2, progress=False)  # fmt: skip
    partial = []
    with pytest.raises(RuntimeError, match="leaky left the base model's weights changed"):
        bench_runner.run_benchmark(
            config, model_loader=_tiny_loader(tiny_model_dir), on_update=partial.append
        )
    assert partial and partial[-1]["runs"][0]["method"] == "leaky" and partial[-1]["complete"] is False


def test_counterfact_probability_comparison(tmp_path, tiny_model_dir, registry):
    config = bench_config.BenchmarkConfig(dataset="counterfact", data_path=str(COUNTERFACT), methods=("base", "lookup"),
                                   num_edits=(3,), model=str(tiny_model_dir), max_new_tokens=4,
                                   progress=False)  # fmt: skip
    result = bench_runner.run_benchmark(config, model_loader=_tiny_loader(tiny_model_dir))
    base, lookup = (run["metrics"] for run in result["runs"])
    assert result["config"]["probabilities"] is True
    assert base["efficacy_prob_count"] == 3
    assert base["paraphrase_prob_count"] == 6
    # Neighborhood prompts only: CounterFact's attribute prompts (answer = the new target) have no contrast.
    assert base["locality_prob_count"] == 6
    assert 0.0 <= base["efficacy_prob"] <= 1.0
    # The cache exposes no log-probabilities: null, with a note.
    assert lookup["efficacy_prob"] is None and lookup["efficacy_prob_count"] == 0
    assert "lookup expose(s) no log-probabilities: P(new)>P(true) is null there" in result["notes"]
    # Generation prompts have no exact answer and are not paraphrases.
    assert base["paraphrase_count"] == 6


# ----------------------------------------------------------------------------- SERAC through the runtime


@pytest.fixture(scope="session")
def tiny_serac_factory(char_tokenizer, embedder):
    from serac.counterfactual import CounterfactualModel
    from serac.modeling import EditableModel
    from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig
    from serac.store import EditStore

    counterfactual = CounterfactualModel(make_tiny_t5(char_tokenizer, seed=3), char_tokenizer)
    built = []

    def factory(model, tokenizer, serac_path):
        scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.75, top_k=1))
        editable = EditableModel(model, tokenizer, scope_classifier=scope, counterfactual_model=counterfactual,
                                 store=EditStore(embedder))  # fmt: skip
        built.append(editable)
        return editable

    factory.built = built
    return factory


def test_serac_runs_with_a_fresh_store_per_setting(tmp_path, tiny_model_dir, tiny_serac_factory, registry):
    config = bench_config.BenchmarkConfig(dataset="counterfact", data_path=str(COUNTERFACT), methods=("base", "serac"),
                                   num_edits=(1, 3), limit_queries=2, model=str(tiny_model_dir), max_new_tokens=4,
                                   progress=False)  # fmt: skip
    result = bench_runner.run_benchmark(
        config, model_loader=_tiny_loader(tiny_model_dir), editable_factory=tiny_serac_factory
    )
    editable = tiny_serac_factory.built[-1]
    assert len(editable.store) == 0  # emptied after the last setting
    runs = {(run["method"], run["num_edits"]): run for run in result["runs"]}
    serac = runs[("serac", 3)]
    assert serac["stored_edits"] == 3
    metrics = serac["metrics"]
    # An edit's own prompt is nearest to its own edit text: routed in scope.
    assert metrics["scope_recall"] > 0
    assert metrics["efficacy_prob_count"] == 2  # routed probabilities are available
    # SERAC wraps the base model: timed in pairs with it, query by query.
    assert metrics["latency_pairs"] == metrics["query_count"] > 0
    assert metrics["query_ms_p50_ratio_to_base"] > 0
    # Out-of-scope queries (locality) are among the timed pairs, with their own ratio.
    assert metrics["latency_pairs_out_of_scope"] == metrics["locality_count"] > 0
    assert metrics["query_ms_p50_ratio_to_base_out_of_scope"] > 0
    # The p95 ratio comes from the base run of the same setting.
    assert metrics["query_ms_p95_ratio_to_base"] == pytest.approx(
        metrics["query_ms_p95"] / runs[("base", 3)]["metrics"]["query_ms_p95"]
    )
    assert runs[("serac", 1)]["stored_edits"] == 1


def test_background_edits_are_stored_not_evaluated_and_routing_counts_every_query(
    tmp_path, tiny_model_dir, tiny_serac_factory, registry
):
    config = bench_config.BenchmarkConfig(dataset="mquake", data_path=str(MQUAKE), methods=("base", "serac"),
                                   num_edits=(None,), limit_queries=2, model=str(tiny_model_dir),
                                   max_new_tokens=4, progress=False, background=("synthetic:30",))  # fmt: skip
    examples = bench_data.load_benchmark_examples(config)
    ordered, _ = bench_data.order_examples(examples, config.seed)
    background = bench_data.load_background_edits(config, ordered)
    assert len(background) == 30
    assert not {edit.key for edit in background} & {example.edit.key for example in ordered}
    setting = bench_data.build_setting(ordered, len(ordered), 2, probabilities=False)
    result = bench_runner.run_benchmark(
        config, model_loader=_tiny_loader(tiny_model_dir), editable_factory=tiny_serac_factory
    )
    assert result["config"]["background_edits"] == 30
    assert any("--background" in note for note in result["notes"])
    serac = next(run for run in result["runs"] if run["method"] == "serac")
    metrics = serac["metrics"]
    assert serac["stored_edits"] == setting.num_edits + 30 and serac["background_edits"] == 30
    # Only the evaluated edits' queries are asked: 2 per metric, and the routing rates over all of them.
    assert metrics["locality_count"] == 2
    assert metrics["scope_false_positive_rate_all_count"] == len(setting.routing_out_of_scope) > 2
    assert metrics["scope_recall_all_count"] == len(setting.routing_in_scope) > 2
    by_kind = metrics["scope_false_positive_rate_by_kind"]
    assert sum(entry["count"] for entry in by_kind.values()) == len(setting.routing_out_of_scope)
    assert sum(entry["positives"] for entry in by_kind.values()) == metrics["scope_false_positives_all"]
    assert sum(entry["count"] for entry in metrics["locality_by_kind"].values()) == metrics["locality_count"]


def test_held_out_subjects_evaluate_a_share_of_subjects_and_store_every_edit():
    examples = generate_synthetic_examples(60, seed=5)
    ordered, _ = bench_data.order_examples(examples, 0)
    every = bench_data.build_setting(ordered, len(ordered), None, probabilities=False)
    held = bench_data.build_setting(ordered, len(ordered), None, probabilities=False, evaluated_fraction=0.3)
    assert held.edits == every.edits
    held_keys = {key for _, key, _ in held.routing_in_scope}
    expected = {e.edit.key for e in split_by_subject(ordered, 0.3)[1]}
    assert held_keys == expected and 0 < len(held_keys) < len(ordered)


# ----------------------------------------------------------------------------- errors before loading


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(bench_runner, "load_base_model", refuse)
    monkeypatch.setattr(bench_runner, "load_editable_model", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "mquake", "--data-path", "/nonexistent/mquake.json"], "data file not found"),
        (["--dataset", "zsre"], "needs --data-path"),
        (["--methods", "base,serac,teleport"], "unknown method(s) teleport"),
        (["--num-edits", "10,ten"], "--num-edits takes positive integers"),
        (["--num-edits", "0"], "--num-edits takes positive integers"),
        (["--max-edits", "rome"], "--max-edits takes METHOD=N"),
        (["--max-edits", "teleport=3"], "unknown method 'teleport'"),
        (["--dataset", "synthetic", "--data-path", str(MQUAKE)], "not used with --dataset synthetic"),
        (["--serac-path", "/nonexistent/serac"], "--serac-path is not a directory"),
        (["--editor-hparams", "/nonexistent/hp.json"], "--editor-hparams file not found"),
        (["--limit-queries", "-1"], "--limit-queries"),
        (["--background", "wikipedia:/x.json"], "the kind must be one of"),
        (["--background", "synthetic:many"], "synthetic takes a number of edits"),
        (["--background", "zsre:/nonexistent/zsre.json"], "data file not found"),
        (["--held-out-subjects", "1.5"], "--held-out-subjects must be in (0, 1]"),
        (["--generation-batch-size", "0"], "--generation-batch-size must be >= 1"),
    ],
)
def test_bad_settings_fail_before_any_model_loads(argv, message, no_model_load, registry, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_cli.main([*argv, "--no-progress"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_malformed_data_fails_before_any_model_loads(tmp_path, no_model_load, registry, capsys):
    broken = _write(tmp_path / "broken.json", [{"requested_rewrite": "not a list"}])
    with pytest.raises(SystemExit):
        bench_cli.main(["--dataset", "mquake", "--data-path", str(broken), "--methods", "base"])
    assert "cannot read the mquake data" in capsys.readouterr().err


# ----------------------------------------------------------------------------- planning


def test_settings_are_nested_and_filter_queries_in_scope_of_any_applied_edit():
    ordered, dropped = bench_data.order_examples(load_mquake(MQUAKE), seed=0)
    assert dropped == 0
    # A case's examples stay together: the two edits of case 3 are adjacent.
    positions = [i for i, example in enumerate(ordered) if example.case_id == "3"]
    assert positions == [positions[0], positions[0] + 1]
    all_edits = bench_data.build_setting(ordered, 4, None, probabilities=False)
    assert set(bench_data.build_setting(ordered, 2, None, probabilities=False).edits) <= set(all_edits.edits)

    in_scope = {normalize_text(q.text) for e in ordered for q in e.in_scope}
    assert all(normalize_text(query.text) not in in_scope for query in all_edits.locality)
    # The loader offers other cases' hops as out-of-scope queries, some of which another applied edit covers.
    offered = {normalize_text(q.text) for e in ordered for q in e.out_of_scope}
    assert offered & in_scope

    # Portability only when all of a case's edits are applied.
    first_case = ordered[0].case_id
    first_case_size = sum(example.case_id == first_case for example in ordered)
    if first_case == "3":
        assert bench_data.build_setting(ordered, 1, None, probabilities=False).portability == []
    assert bench_data.build_setting(ordered, first_case_size, None, probabilities=False).portability


def test_conflicting_edits_are_dropped():
    from serac.data.schema import EditExample

    first = EditExample(edit=Edit(prompt="{} lives in", subject="Ana Roe", target="Lima"), case_id="a")
    conflict = EditExample(edit=Edit(prompt="{} lives in", subject="Ana Roe", target="Quito"), case_id="b")
    same = EditExample(edit=Edit(prompt="{} lives in", subject="Ana Roe", target="Lima"), case_id="c")
    ordered, dropped = bench_data.order_examples([first, conflict, same], seed=1)
    # Whichever comes first in the shuffled order wins; the contradicting ones are dropped.
    assert {example.edit.target for example in ordered} == {ordered[0].edit.target}
    assert dropped == 3 - len(ordered) >= 1


def test_a_shared_edit_is_applied_once_and_counted_once():
    from serac.data.schema import EditExample, PortabilityQuestion

    shared = Edit(prompt="{} lives in", subject="Ana Roe", target="Lima")
    other = Edit(prompt="{} works for", subject="Ben Ode", target="Acme")
    question = PortabilityQuestion("In which country does Ana Roe live?", "Peru")
    examples = [
        EditExample(edit=shared, case_id="1", portability=(question,)),
        EditExample(edit=shared, case_id="1", portability=(question,)),
        EditExample(edit=other, case_id="1"),
    ]
    setting = bench_data.build_setting(examples, 1, None, probabilities=False)
    assert setting.edits == [shared] and setting.num_edits == 1
    assert [query.text for query in setting.portability] == [question.text]  # asked once
    assert bench_data.build_setting(examples, 5, None, probabilities=False).edits == [shared, other]


def test_limit_spreads_paraphrases_over_examples():
    examples = load_counterfact(COUNTERFACT)
    setting = bench_data.build_setting(examples, 3, 3, probabilities=True)
    assert len(setting.paraphrase) == 3
    # One paraphrase of each edited example before a second of any.
    assert len({query.target_new for query in setting.paraphrase}) == 3
    assert all(query.target_true is not None for query in setting.efficacy)


def test_auto_prompt_format_wraps_questions_in_the_chat_template():
    tokenizer = make_char_tokenizer()
    raw = bench_generation.QueryFormatter(tokenizer, "auto")
    assert (
        tokenizer.decode(raw("Who founded Nortex?", torch.device("cpu"))["input_ids"][0])
        == "Who founded Nortex?"
    )
    tokenizer.chat_template = (
        "{% for message in messages %}U:{{ message['content'] }}<eos>{% endfor %}"
        "{% if add_generation_prompt %}A:{% endif %}"
    )

    def text(prompt_format: str, query: str) -> str:
        inputs = bench_generation.QueryFormatter(tokenizer, prompt_format)(query, torch.device("cpu"))
        return tokenizer.decode(inputs["input_ids"][0])

    assert text("auto", "Who founded Nortex?") == "U:Who founded Nortex?<eos>A:"
    assert text("auto", "Nortex was founded by") == "Nortex was founded by"
    assert text("chat", "Nortex was founded by") == "U:Nortex was founded by<eos>A:"
    assert text("raw", "Who founded Nortex?") == "Who founded Nortex?"


def test_parse_num_edits():
    assert bench_cli.parse_num_edits("100, 10,all,10") == (10, 100, None)
    with pytest.raises(bench_config.BenchmarkError):
        bench_cli.parse_num_edits(" , ")


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_top1_hits_counts_the_teacher_forced_argmax_tokens(tiny_llama, char_tokenizer):
    prompt, target = "the capital of france is", "paris"
    hits, tokens = top1_hits(tiny_llama, char_tokenizer, prompt, target)
    prompt_ids = char_tokenizer(prompt).input_ids
    target_ids = char_tokenizer(" " + target, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = tiny_llama(torch.tensor([prompt_ids + target_ids])).logits[0]
    predicted = logits[len(prompt_ids) - 1 : -1].argmax(-1).tolist()
    assert tokens == len(target_ids)
    assert hits == sum(p == t for p, t in zip(predicted, target_ids, strict=True))
    assert top1_correct(tiny_llama, char_tokenizer, prompt, target) == (hits == tokens)


def test_token_drawdown_beside_answer_drawdown(tmp_path, tiny_model_dir, registry):
    config = bench_config.BenchmarkConfig(dataset="mquake", data_path=str(MQUAKE), methods=("base", "noise"),
                                   num_edits=(1,), limit_queries=4, model=str(tiny_model_dir),
                                   max_new_tokens=2, progress=False)  # fmt: skip
    model, tokenizer = _tiny_loader(tiny_model_dir)(None)
    result = bench_runner.run_benchmark(config, model_loader=lambda name: (model, tokenizer))
    base, noise = (run["metrics"] for run in result["runs"])
    # Counted over answer tokens, not answers; the unedited model draws nothing down from itself.
    assert base["drawdown_tokens_count"] > base["drawdown_count"] > 0
    assert 0 <= base["out_of_scope_token_top1_unedited"] <= 1
    assert base["drawdown_tokens"] == 0 and base["drawdown"] == 0
    # The noised model's token drawdown is the drop between the two accuracies it reports.
    assert noise["drawdown_tokens_count"] == base["drawdown_tokens_count"]
    assert noise["drawdown_tokens"] == pytest.approx(
        noise["out_of_scope_token_top1_unedited"] - noise["out_of_scope_token_top1"]
    )
    assert "DD tok" in markdown_table(result)


# ----------------------------------------------------------------------------- edit forms and kinds


def test_question_edits_have_no_subject_and_keep_their_queries():
    def load(**form):
        config = bench_config.BenchmarkConfig(
            dataset="mquake", data_path=str(MQUAKE), methods=("serac",), progress=False, **form
        )
        return bench_data.load_benchmark_examples(config)

    prompts, questions = load(), load(edit_form="question")
    assert questions and len(questions) == len(prompts)
    for example, original in zip(questions, prompts, strict=True):
        assert example.edit.subject is None and "{}" not in example.edit.prompt
        assert example.edit.query == original.edit.query and example.edit.target == original.edit.target
        assert example.in_scope == original.in_scope and example.out_of_scope == original.out_of_scope
    with pytest.raises(ValueError, match="statement edit"):
        questions[0].as_statement_edit().as_question_edit()
    with pytest.raises(bench_config.BenchmarkError, match="--edit-form"):
        bench_config.validate_config(bench_config.BenchmarkConfig(methods=("serac",), edit_form="questions"))


def test_the_in_context_kind_reaches_the_loaded_model(
    tmp_path, tiny_model_dir, char_tokenizer, embedder, registry
):
    from serac.counterfactual import CounterfactualModel
    from serac.in_context import InContextCounterfactual
    from serac.memory import EditMemory
    from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig
    from serac.store import EditStore

    folder = tmp_path / "parts"
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.75, top_k=1))
    counterfactual = CounterfactualModel(make_tiny_t5(char_tokenizer, seed=3), char_tokenizer)
    EditMemory(scope, counterfactual, EditStore(embedder)).save_pretrained(folder)
    built = []

    def factory(model, tokenizer, serac_path, **kind):
        built.append(bench_methods.load_editable_model(model, tokenizer, serac_path, **kind))
        return built[-1]

    config = bench_config.BenchmarkConfig(dataset="counterfact", data_path=str(COUNTERFACT), methods=("serac",),
                                          num_edits=(2,), limit_queries=2, model=str(tiny_model_dir),
                                          max_new_tokens=4, progress=False, serac_path=str(folder),
                                          counterfactual="in-context")  # fmt: skip
    result = bench_runner.run_benchmark(
        config, model_loader=_tiny_loader(tiny_model_dir), editable_factory=factory
    )
    (editable,) = built
    assert isinstance(editable.counterfactual_model, InContextCounterfactual)
    assert editable.counterfactual_model.model is editable.base_model
    assert result["runs"][0]["metrics"]["efficacy_count"] == 2
    with pytest.raises(bench_config.BenchmarkError, match="--counterfactual"):
        bench_config.validate_config(
            bench_config.BenchmarkConfig(methods=("serac",), counterfactual="learned")
        )


def test_batched_generation_answers_and_routes_as_one_query_at_a_time(
    tmp_path, tiny_model_dir, tiny_serac_factory, registry
):
    def run(batch_size):
        config = bench_config.BenchmarkConfig(dataset="mquake", data_path=str(MQUAKE), methods=("base", "serac"),
                                       num_edits=(None,), limit_queries=5, model=str(tiny_model_dir),
                                       max_new_tokens=6, progress=False, save_generations=True,
                                       generation_batch_size=batch_size)  # fmt: skip
        result = bench_runner.run_benchmark(
            config, model_loader=_tiny_loader(tiny_model_dir), editable_factory=tiny_serac_factory
        )
        return {run["method"]: run for run in result["runs"]}

    one, batched = run(1), run(4)
    for method in ("base", "serac"):
        # Queries of different lengths share a batch: left padding must not change a greedy answer here.
        assert [row["generation"] for row in batched[method]["generations"]] == [
            row["generation"] for row in one[method]["generations"]
        ]
        for name in ("efficacy", "paraphrase", "locality", "portability"):
            assert batched[method]["metrics"][name] == one[method]["metrics"][name]
    serac_one, serac_batched = one["serac"]["metrics"], batched["serac"]["metrics"]
    # Each row of a batch is routed on its own and counted once.
    assert serac_batched["scope_recall"] == serac_one["scope_recall"] > 0
    assert serac_batched["scope_false_positive_rate"] == serac_one["scope_false_positive_rate"]
    assert serac_one["latency_pairs"] > 0 and serac_batched["latency_pairs"] == 0
    assert len({len(row["query"]) for row in one["base"]["generations"]}) > 1
