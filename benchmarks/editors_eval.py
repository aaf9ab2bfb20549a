"""Measure the weight editors on the real base model with MQuAKE-CF edits.

Parts (run separately so they can be budgeted; each writes ``<out>/<part>.json``):

* ``stats``: the default self-generated corpus and the key second moments of the given layers.
* ``sweep``: ROME efficacy per candidate layer on a few edits (how the SmolLM2 layer was chosen).
* ``rome``: ROME on N edits one at a time (restore between) and then sequentially (no restore).
* ``memit``: MEMIT with batches of the first B edits.
* ``samples``: ROME efficacy on a few edits with statistics from different numbers of token vectors.

Metrics per edit: ``efficacy`` (greedy continuation of the edit prompt starts with the target after the
runner's answer normalization: case, punctuation, articles), ``efficacy_tf`` (stricter: every target token
is the argmax under teacher forcing, so "the United Kingdom" for "United Kingdom" fails), ``question`` (the
target appears as whole words in the greedy answer to the rewrite's question) and ``cloze`` (greedy
continuation of the matching post-edit single-hop cloze starts with the target).

Example:
    python benchmarks/editors_eval.py --part rome --layer 4 --num-edits 20 --out /tmp/editors_results
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from serac.editors import get_editor
from serac.editors.base import target_token_ids
from serac.edits import Edit
from serac.metrics import answer_matches, normalize_answer

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mquake-cf-dev.json"


def load_edits(path: Path) -> list[dict]:
    """One record per requested rewrite: the Edit, its question and the matching post-edit cloze."""
    records = []
    for case in json.loads(path.read_text()):
        for rewrite in case["requested_rewrite"]:
            edit = Edit(
                prompt=rewrite["prompt"], subject=rewrite["subject"], target=rewrite["target_new"]["str"]
            )
            cloze = next(
                (hop["cloze"] for hop in case.get("new_single_hops", []) if hop["answer"] == edit.target),
                edit.query,
            )
            records.append({"edit": edit, "question": rewrite["question"], "cloze": cloze})
    return records


@torch.no_grad()
def greedy(model, tokenizer, text: str, max_new_tokens: int) -> str:
    inputs = tokenizer([text], return_tensors="pt").to(next(model.parameters()).device)
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def teacher_forced_argmax(model, tokenizer, query: str, target: str) -> bool:
    prompt = tokenizer(query).input_ids
    target_ids = target_token_ids(tokenizer, query, target)
    ids = torch.tensor([prompt + target_ids], device=next(model.parameters()).device)
    logits = model(ids).logits[0, len(prompt) - 1 : -1]
    return bool((logits.argmax(-1).cpu() == torch.tensor(target_ids)).all())


def evaluate(model, tokenizer, record: dict) -> dict:
    edit = record["edit"]
    target = normalize_answer(edit.target)
    length = len(target_token_ids(tokenizer, edit.query, edit.target)) + 2
    continuation = greedy(model, tokenizer, edit.query, length)
    answer = greedy(model, tokenizer, record["question"], 16)
    cloze = (
        continuation if record["cloze"] == edit.query else greedy(model, tokenizer, record["cloze"], length)
    )
    return {
        "efficacy": normalize_answer(continuation).startswith(target),
        "efficacy_tf": teacher_forced_argmax(model, tokenizer, edit.query, edit.target),
        "question": answer_matches(answer, edit.target),
        "cloze": normalize_answer(cloze).startswith(target),
        "continuation": continuation,
        "answer": answer,
    }


def summarize(rows: list[dict]) -> dict:
    keys = ("efficacy", "efficacy_tf", "question", "cloze")
    return {key: sum(r[key] for r in rows) / len(rows) for key in keys} | {"n": len(rows)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part", required=True, choices=["stats", "sweep", "rome", "memit", "samples", "base"]
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("editors_results"))
    parser.add_argument(
        "--model", default=None, help="base model name or path (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--num-edits", type=int, default=20)
    parser.add_argument("--offset", type=int, default=0, help="skip this many edits first")
    parser.add_argument("--layer", type=int, default=None, help="ROME layer (default: the preset)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="sweep candidates / MEMIT layers")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10])
    parser.add_argument("--samples", type=int, nargs="+", default=[1000, 5000], help="statistics sizes")
    parser.add_argument("--stats-samples", type=int, default=5000)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--mom2-update-weight", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    from serac.offline import load_base_model

    model, tokenizer = load_base_model(args.model)
    records = load_edits(args.data)[args.offset : args.offset + args.num_edits]
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "command": " ".join([sys.executable, "benchmarks/editors_eval.py", *(argv or sys.argv[1:])])
    }
    common = {"stats_samples": args.stats_samples}
    if args.num_steps is not None:
        common["num_steps"] = args.num_steps

    def run_single(editor, subset, restore: bool) -> tuple[list[dict], list[float]]:
        rows, seconds = [], []
        for record in subset:
            editor.apply(model, tokenizer, [record["edit"]])
            seconds.append(editor.last_stats["seconds"])
            rows.append(evaluate(model, tokenizer, record) | {"steps": editor.last_stats.get("steps")})
            if restore:
                editor.restore()
            logging.info("%s -> %r", record["edit"].query, rows[-1]["continuation"])
        return rows, seconds

    if args.part == "base":
        rows = [evaluate(model, tokenizer, record) for record in records]
        result["unedited"] = summarize(rows)
    elif args.part == "stats":
        from serac.editors.layer_stats import layer_second_moments

        for samples in args.samples:
            start = time.perf_counter()
            layer_second_moments(model, tokenizer, args.layers or [4], num_samples=samples)
            result[f"seconds_{samples}"] = time.perf_counter() - start
    elif args.part == "sweep":
        for layer in args.layers:
            editor = get_editor("rome", layer=layer, **common)
            rows, seconds = run_single(editor, records, restore=True)
            result[f"layer_{layer}"] = summarize(rows) | {"seconds_per_edit": sum(seconds) / len(seconds)}
            logging.info("layer %d: %s", layer, result[f"layer_{layer}"])
            (args.out / "sweep.json").write_text(json.dumps(result, indent=1))
    elif args.part == "rome":
        overrides = common | ({"layer": args.layer} if args.layer is not None else {})
        editor = get_editor("rome", **overrides)
        rows, seconds = run_single(editor, records, restore=True)
        result["single"] = summarize(rows) | {
            "seconds_per_edit": sum(seconds) / len(seconds),
            "first_apply_seconds": seconds[0],
        }
        result["single_rows"] = rows
        (args.out / "rome.json").write_text(json.dumps(result, indent=1))
        # Sequential: each edit stays in while the next is inserted; score all edits at the end.
        editor = get_editor("rome", **overrides)
        start = time.perf_counter()
        for record in records:
            editor.apply(model, tokenizer, [record["edit"]])
        elapsed = time.perf_counter() - start
        rows = [evaluate(model, tokenizer, record) for record in records]
        editor.restore()
        result["sequential"] = summarize(rows) | {"seconds_per_edit": elapsed / len(records)}
        result["sequential_rows"] = rows
    elif args.part == "memit":
        overrides = dict(common)
        if args.layers:
            overrides["layers"] = args.layers
        if args.mom2_update_weight is not None:
            overrides["mom2_update_weight"] = args.mom2_update_weight
        for batch_size in args.batch_sizes:
            editor = get_editor("memit", **overrides)
            subset = records[:batch_size]
            editor.apply(model, tokenizer, [record["edit"] for record in subset])
            stats = editor.last_stats
            rows = [evaluate(model, tokenizer, record) for record in subset]
            editor.restore()
            result[f"batch_{batch_size}"] = summarize(rows) | {
                "seconds": stats["seconds"],
                "stats_seconds": stats["stats_seconds"],
                "values_seconds": stats["values_seconds"],
                "seconds_per_edit": stats["seconds"] / batch_size,
                "layers": stats["layers"],
                "target_nll_mean": sum(stats["target_nll"]) / batch_size,
            }
            result[f"batch_{batch_size}_rows"] = rows
            logging.info("batch %d: %s", batch_size, result[f"batch_{batch_size}"])
            (args.out / "memit.json").write_text(json.dumps(result, indent=1))
    elif args.part == "samples":
        for samples in args.samples:
            overrides = common | {"stats_samples": samples}
            if args.layer is not None:
                overrides["layer"] = args.layer
            rows, seconds = run_single(get_editor("rome", **overrides), records, restore=True)
            result[f"samples_{samples}"] = summarize(rows)
            logging.info("samples %d: %s", samples, result[f"samples_{samples}"])
    (args.out / f"{args.part}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_rows")}, indent=1))


if __name__ == "__main__":
    main()
