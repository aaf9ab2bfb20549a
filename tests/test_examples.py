"""The scripts in examples/, each run as a user runs it, on a tiny base model and a tiny SERAC folder.

The tiny models are random, so their answers are noise; what is checked is what the scripts promise: the
routing of each query, that an in-scope answer is the counterfactual model's and an out-of-scope one the base
model's own, that a second process sees an edit, what reaches the openai client.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from serac import CounterfactualModel, Edit, EditableModel, EditStore
from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig

from .conftest import make_char_tokenizer, make_tiny_llama, save_tiny_cross_encoder

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
MAX_NEW_TOKENS = 8
CITIZEN = Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")
SPORT = Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")
CITIZEN_QUESTION = "Which country is Ellie Kemper a citizen of?"
SKY = "Why is the sky blue?"


@dataclass
class TinyParts:
    """The folders the scripts get on their command line, and the same models loaded here to compare with."""

    base_dir: Path
    editor_dir: Path
    cross_encoder_dir: Path
    base_model: torch.nn.Module
    tokenizer: object
    counterfactual: CounterfactualModel
    embedder: object

    def counterfactual_answer(self, edit: Edit, query: str) -> str:
        return self.counterfactual.generate([edit], [query], max_new_tokens=MAX_NEW_TOKENS)[0]

    def base_answer(self, text: str) -> str:
        """The base model's own greedy continuation of ``text``."""
        ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]])
        output = self.base_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW_TOKENS, do_sample=False
        )
        return self.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)

    def chat_text(self, question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, embedder) -> TinyParts:
    """A tiny Llama with a character tokenizer (and a chat template), a SERAC folder for it with the MiniLM
    embedding scope classifier and a tiny counterfactual model, and a tiny cross-encoder to train from."""

    root = tmp_path_factory.mktemp("example_parts")
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    base_model = make_tiny_llama(tokenizer, seed=0)
    base_model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    counterfactual = CounterfactualModel(make_tiny_llama(tokenizer, seed=3), tokenizer)
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))
    editor = EditableModel(
        base_model,
        tokenizer,
        scope_classifier=scope,
        counterfactual_model=counterfactual,
        store=EditStore(embedder),
    )
    editor.save_pretrained(root / "editor")

    save_tiny_cross_encoder(root / "cross_encoder")
    return TinyParts(
        base_dir=root / "base",
        editor_dir=root / "editor",
        cross_encoder_dir=root / "cross_encoder",
        base_model=base_model,
        tokenizer=tokenizer,
        counterfactual=counterfactual,
        embedder=embedder,
    )


def run_example(name: str, *args: object, cwd: Path, timeout: float = 150) -> str:
    """Run ``examples/NAME`` as a user would, in ``cwd``, offline; returns its standard output."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # An empty cache of its own: a script that fell back to the default parts would run into the timeout
        # training them here, and never read or write the user's cache.
        "SERAC_CACHE": str(cwd / "serac-cache"),
        # Tiny models gain nothing from more threads; on shared cores extra threads only contend.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [sys.executable, str(EXAMPLES / name), *map(str, args)]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


def folders(parts: TinyParts) -> list[str]:
    return ["--base-model", str(parts.base_dir), "--editor", str(parts.editor_dir)]


def check_quickstart(parts: TinyParts, tmp_path: Path) -> None:
    out = run_example("quickstart.py", *folders(parts), "--max-new-tokens", MAX_NEW_TOKENS, cwd=tmp_path)
    assert "Stored edits: [0, 1, 2]" in out
    assert "  [2] Boris Johnson is the prime minister of the UK." in out
    rows = re.findall(r"Q: (.*)\n   before: (.*)\n   after:  (.*)   \((edit \d+|base model)[,)]", out)
    answers = {
        query: (ast.literal_eval(old), ast.literal_eval(new), route) for query, old, new, route in rows
    }
    expected = {  # query: (route, the edit that answers it)
        CITIZEN_QUESTION: ("edit 0", CITIZEN),
        "LeBron James plays the sport of": ("edit 1", SPORT),
        "What sport does LeBron James play?": ("edit 1", SPORT),
        SKY: ("base model", None),
        "What is the capital of France?": ("base model", None),
    }
    assert {query: answer[2] for query, answer in answers.items()} == {q: r for q, (r, _) in expected.items()}
    for query, (_, edit) in expected.items():
        before, after, _ = answers[query]
        if edit is None:
            assert after == before  # out of scope: the base model's answer, unchanged by the edits
        else:  # in scope: the counterfactual model's answer (cut at --max-new-tokens)
            assert after and after != before
            assert parts.counterfactual_answer(edit, query).startswith(after)


def check_wrap_your_model(parts: TinyParts, tmp_path: Path) -> None:
    out = run_example("wrap_your_model.py", *folders(parts), "--max-new-tokens", MAX_NEW_TOKENS, cwd=tmp_path)
    base = ast.literal_eval(re.search(r"   base model:     (.*)", out).group(1))
    edited = ast.literal_eval(re.search(r"   editable model: (.*)", out).group(1))
    assert base == parts.base_answer(CITIZEN.prompt)  # disable_edits() is the base model alone
    assert edited.strip() and parts.counterfactual_answer(CITIZEN, CITIZEN.prompt).startswith(edited.strip())
    assert re.search(r"routing: in_scope=True edit_id=0 score=(0\.[6-9]\d|1\.00)", out)
    assert "base model weights unchanged: True" in out
    assert "model.config is base_model.config: True" in out
    saved = re.search(r"saved: (.*)", out).group(1).split(", ")
    assert "serac_config.json" in saved and not any(name.startswith("model") for name in saved)
    assert f"reloaded edits: [(0, {CITIZEN!r})]" in out


def check_statement_edits(parts: TinyParts, tmp_path: Path) -> None:
    out = run_example("statement_edits.py", *folders(parts), cwd=tmp_path)
    assert "  [1] prompt    LeBron James plays the sport of football" in out
    assert "  [3] statement The Eiffel Tower is painted green." in out
    routes = [(ast.literal_eval(q), r) for q, r in re.findall(r"^  (['\"].*['\"]) +-> (.+)$", out, re.M)]
    questions = [
        CITIZEN_QUESTION,
        "What sport does LeBron James play?",
        "Who is the prime minister of the UK?",
        "What colour is the Eiffel Tower?",
        SKY,
    ]
    before = ["edit 0", "edit 1", "edit 2", "edit 3", "base model"]
    after = ["base model", "edit 4", "edit 2", "edit 3", "base model"]  # edit 0 removed, edit 1 superseded
    assert routes == list(zip(questions, before, strict=True)) + list(zip(questions, after, strict=True))
    assert "Edit 4 superseded edit 1; stored ids: [0, 2, 3, 4]" in out
    assert "Removed edit 0; stored ids: [2, 3, 4]" in out


def check_shared_store(parts: TinyParts, tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    out = run_example("shared_store.py", *folders(parts), "--store", database, "--timeout", 120, cwd=tmp_path)
    reader = re.findall(r"^\[reader (\d+)\] (.*)$", out, re.M)
    writer = re.findall(r"^\[writer (\d+)\] (.*)$", out, re.M)
    assert len(writer) == 1 and len(reader) == 3
    assert writer[0][0] != reader[0][0]  # two processes
    assert writer[0][1] == "stored edit 0: LeBron James plays the sport of football"
    assert reader[0][1] == "0 edits; 'What sport does LeBron James play?' -> base model"
    assert reader[1][1].startswith(f"sees [(0, {SPORT!r})] after ")  # without reopening the store
    assert reader[2][1] == "'What sport does LeBron James play?' -> edit 0"
    # The store is the database: the edit is in the file, for any process that opens it.
    assert EditStore(parts.embedder, url=f"sqlite:///{database}").items() == [(0, SPORT)]


def check_serve_and_query(parts: TinyParts, tmp_path: Path) -> None:
    out = run_example("serve_and_query.py", *folders(parts), "--max-tokens", MAX_NEW_TOKENS, cwd=tmp_path)
    assert "POST /v1/edits -> ids [0]" in out
    pattern = r"Q: (.*)\n   answer:   (.*)  serac=(\{.*\})\n   streamed: (.*)  serac=(\{.*\})"
    rows = {q: [ast.literal_eval(field) for field in rest] for q, *rest in re.findall(pattern, out)}
    assert list(rows) == [CITIZEN_QUESTION, SKY]
    answer, routing, streamed, stream_routing = rows[CITIZEN_QUESTION]
    assert answer == streamed == parts.counterfactual_answer(CITIZEN, CITIZEN_QUESTION)
    assert routing == stream_routing and (routing["route"], routing["edit_id"]) == ("edit", 0)
    assert routing["score"] >= 0.6
    answer, routing, streamed, stream_routing = rows[SKY]
    assert answer == streamed == parts.base_answer(parts.chat_text(SKY))  # the base model's own generate()
    assert routing == stream_routing and (routing["route"], routing["edit_id"]) == ("base_model", None)


def check_proxy(parts: TinyParts, tmp_path: Path) -> None:
    out = run_example("proxy.py", *folders(parts), "--max-tokens", MAX_NEW_TOKENS, cwd=tmp_path, timeout=240)
    assert re.search(
        r"proxy http://127\.0\.0\.1:\d+/v1 in front of http://127\.0\.0\.1:\d+/v1; stored edit ids \[0\]", out
    )
    pattern = r"Q: (.*)\n   via proxy: (.*)  serac=(\{.*\})\n   upstream:  (.*)"
    rows = {q: [ast.literal_eval(field) for field in rest] for q, *rest in re.findall(pattern, out)}
    assert list(rows) == [CITIZEN_QUESTION, SKY]
    base_answers = {question: parts.base_answer(parts.chat_text(question)) for question in rows}
    proxied, routing, upstream = rows[CITIZEN_QUESTION]
    assert proxied == parts.counterfactual_answer(CITIZEN, CITIZEN_QUESTION)  # answered by the proxy
    assert (routing["route"], routing["edit_id"]) == ("edit", 0)
    assert upstream == base_answers[CITIZEN_QUESTION] != proxied  # the upstream has no edits
    proxied, routing, upstream = rows[SKY]
    assert proxied == upstream == base_answers[SKY]  # passed on from the upstream unchanged
    assert (routing["route"], routing["edit_id"]) == ("base_model", None)


def check_train_parts(parts: TinyParts, tmp_path: Path) -> None:
    from serac.training import TRAINING_REPORT_NAME

    output = tmp_path / "my-serac"
    out = run_example(
        "train_parts.py", "--output-dir", output, "--base-model", parts.base_dir,
        "--cross-encoder", parts.cross_encoder_dir, "--max-steps", 4, "--synthetic", 30, cwd=tmp_path,
    )  # fmt: skip
    written = {path.name for path in output.iterdir()}
    assert written >= {"scope_classifier", "counterfactual_model", "serac_config.json"}
    config = json.loads((output / "serac_config.json").read_text())
    assert config["base_model_name_or_path"] == str(parts.base_dir)
    report = json.loads((output / "scope_classifier" / TRAINING_REPORT_NAME).read_text())
    assert report["train_edits"] + report["held_out_edits"] == 4 + 30  # the script's own edits and synthetic
    assert report["global_step"] == 4
    threshold = report["threshold_choice"]["threshold"]
    assert f"scope threshold {threshold:.3f} (chosen on held-out edits)" in out
    score = float(re.search(r"\"What is Ada Rell's job\?\" -> edit 0 \(score ([\d.]+)\)", out).group(1))
    assert score >= threshold - 1e-3


def check_run_benchmark(parts: TinyParts, tmp_path: Path) -> None:
    output = tmp_path / "bench" / "results.json"
    out = run_example(
        "run_benchmark.py", *folders(parts), "--num-edits", "1,2", "--limit-queries", 2, "--max-new-tokens", 4,
        "--output", output, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    result = json.loads(output.read_text())
    runs = {(run["method"], run["num_edits"]): run["metrics"] for run in result["runs"]}
    assert list(runs) == [(method, n) for method in ("base", "cache", "serac") for n in (1, 2)]
    table = output.with_suffix(".md").read_text()
    for (method, n), metrics in runs.items():
        assert re.search(rf"^\| {method} \| batch \| {n} \|", table, re.M)  # the table serac bench printed
        assert f"| {method} | batch | {n} |" in out
        summary = (
            f"{method:>6} x {n:>3} edits: efficacy {metrics['efficacy']}, locality {metrics['locality']}"
        )
        assert summary in out
    assert runs[("base", 1)]["locality"] == runs[("base", 2)]["locality"] == 1.0  # the unedited model


CHECKS = {
    "quickstart.py": check_quickstart,
    "wrap_your_model.py": check_wrap_your_model,
    "statement_edits.py": check_statement_edits,
    "shared_store.py": check_shared_store,
    "serve_and_query.py": check_serve_and_query,
    "proxy.py": check_proxy,
    "train_parts.py": check_train_parts,
    "run_benchmark.py": check_run_benchmark,
}


def test_every_example_is_run_here():
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(CHECKS)
    listed = (EXAMPLES / "README.md").read_text()
    assert all(f"[`{name}`]({name})" in listed for name in CHECKS)


@pytest.mark.parametrize("name", list(CHECKS))
def test_example(name, parts, tmp_path):
    if name in ("serve_and_query.py", "proxy.py"):
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
        pytest.importorskip("openai")
    CHECKS[name](parts, tmp_path)
