"""Which offline model should be the default counterfactual model? Measure the candidates.

No pretrained T5 or BART loads offline, so the SERAC paper's choice (a pretrained seq2seq model) is not
available. The candidates that are:

* ``smollm2-zero-shot``: SmolLM2-135M-Instruct as a causal counterfactual model, not fine-tuned (it only
  reads the edit in its input format);
* ``smollm2``: the same model fine-tuned on the synthetic edit data;
* ``minilm2minilm``: an encoder-decoder warm-started from all-MiniLM-L6-v2 on both sides (the decoder gets
  causal self-attention and new cross-attention, as in Rothe et al., 2020), fine-tuned on the same data;
* ``t5-scratch``: a small T5 initialised at random (SmolLM2's tokenizer), fine-tuned on the same data.

Every fine-tuned candidate gets the same synthetic training edits, steps and batch size. Each is then
asked the in-scope queries of a held-out dataset (default: MQuAKE-CF dev) given the right edit, and scored
with :func:`serac.metrics.answer_matches`, as ``benchmarks/parts_quality.py`` does; the answer latency and
the training time are reported too.

Run::

    python benchmarks/counterfactual_choice.py --data-path ../shared/data/mquake-cf-dev.json \\
        --steps 150 --output counterfactual_choice.json [--trained smollm2=PATH]

``--trained NAME=PATH`` evaluates an already trained counterfactual model for a candidate instead of
training it again (for example the default parts' ``counterfactual_model``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from parts_quality import counterfactual_quality

from serac.counterfactual import CounterfactualModel
from serac.data import generate_synthetic_examples, load_examples
from serac.offline import resolve_base_model, resolve_embedder
from serac.training import CounterfactualTrainingArguments, train_counterfactual_model

logger = logging.getLogger(__name__)

CANDIDATES = ("smollm2-zero-shot", "smollm2", "minilm2minilm", "t5-scratch")


def build_minilm2minilm(directory: Path) -> Path:
    """An encoder-decoder warm-started from all-MiniLM-L6-v2 on both sides, saved as a checkpoint."""
    from transformers import AutoTokenizer, EncoderDecoderModel

    embedder = resolve_embedder(None)
    tokenizer = AutoTokenizer.from_pretrained(embedder)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(embedder, embedder)
    # A BERT tokenizer has no end-of-sequence token: [SEP] plays that part, [CLS] starts the decoder.
    tokenizer.eos_token = tokenizer.sep_token
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.eos_token_id = tokenizer.sep_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.decoder_start_token_id = tokenizer.cls_token_id
    model.generation_config.eos_token_id = tokenizer.sep_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_t5_scratch(directory: Path) -> Path:
    """A small T5 with random weights and SmolLM2's tokenizer, saved as a checkpoint."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(None))
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=256,
        d_kv=32,
        d_ff=1024,
        num_layers=4,
        num_heads=8,
        decoder_start_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def starting_point(name: str, scratch: Path) -> str:
    if name in ("smollm2", "smollm2-zero-shot"):
        return resolve_base_model(None)
    if name == "minilm2minilm":
        return str(build_minilm2minilm(scratch / name))
    if name == "t5-scratch":
        return str(build_t5_scratch(scratch / name))
    raise ValueError(f"unknown candidate {name!r}; expected one of {CANDIDATES}")


def answer_latency_ms(counterfactual: CounterfactualModel, examples, repeats: int) -> float:
    """Median milliseconds to answer one in-scope query (batch of one), over ``repeats`` queries."""
    rows = [(example.edit, query.text) for example in examples for query in example.in_scope][:repeats]
    counterfactual.generate([rows[0][0]], [rows[0][1]], max_new_tokens=8)  # warm-up
    times = []
    for edit, query in rows:
        start = time.perf_counter()
        counterfactual.generate([edit], [query], max_new_tokens=8)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", required=True, help="held-out dataset file (MQuAKE format by default)")
    parser.add_argument("--dataset", default="mquake", choices=["mquake", "zsre", "counterfact", "jsonl"])
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma list of {CANDIDATES}")
    parser.add_argument(
        "--trained", action="append", default=[], help="NAME=PATH of an already trained candidate"
    )
    parser.add_argument("--synthetic-edits", type=int, default=3000, help="synthetic training edits")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per fine-tuned candidate")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the training default")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N edits only")
    parser.add_argument("--latency-queries", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    candidates = [name.strip() for name in args.candidates.split(",") if name.strip()]
    unknown = [name for name in candidates if name not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; expected some of {CANDIDATES}")
    trained = dict(item.split("=", 1) for item in args.trained)
    if not Path(args.data_path).exists():
        parser.error(f"no dataset at {args.data_path}")

    evaluation = load_examples(f"{args.dataset}:{args.data_path}")[: args.limit]
    training = generate_synthetic_examples(args.synthetic_edits, seed=args.seed)
    results: dict = {
        "config": {**vars(args), "evaluation_edits": len(evaluation), "training_edits": len(training)},
        "candidates": {},
    }
    with tempfile.TemporaryDirectory(prefix="serac-cf-choice-") as scratch:
        scratch = Path(scratch)
        for name in candidates:
            logger.info("Candidate %s", name)
            record: dict = {}
            if name in trained:
                counterfactual = CounterfactualModel.from_pretrained(trained[name])
                record["trained_from"] = trained[name]
            elif name == "smollm2-zero-shot":
                counterfactual = CounterfactualModel.from_pretrained(starting_point(name, scratch))
            else:
                start = starting_point(name, scratch)
                overrides = {"learning_rate": args.learning_rate} if args.learning_rate else {}
                training_arguments = CounterfactualTrainingArguments(
                    max_steps=args.steps,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    eval_steps=0,
                    save_steps=max(args.steps, 1),
                    eval_generations=0,
                    **overrides,
                )
                began = time.perf_counter()
                counterfactual = train_counterfactual_model(training, training_arguments, start, None)
                record["train_seconds"] = time.perf_counter() - began
                record["steps"] = args.steps
            record["parameters"] = sum(p.numel() for p in counterfactual.model.parameters())
            record["quality"] = counterfactual_quality(evaluation, counterfactual)
            record["answer_ms_p50"] = answer_latency_ms(counterfactual, evaluation, args.latency_queries)
            results["candidates"][name] = record
            logger.info(
                "%s: accuracy %.3f over %d queries, %.0f ms per answer",
                name, record["quality"]["accuracy"]["rate"], record["quality"]["accuracy"]["count"],
                record["answer_ms_p50"],
            )  # fmt: skip
            if args.output:
                Path(args.output).write_text(json.dumps(results, indent=2))
    print(f"{'candidate':<20} {'accuracy':>9} {'queries':>8} {'train s':>8} {'ms/answer':>10}")
    for name, record in results["candidates"].items():
        accuracy = record["quality"]["accuracy"]
        train_seconds = record.get("train_seconds")
        print(
            f"{name:<20} {accuracy['rate']:>9.3f} {accuracy['count']:>8} "
            f"{'-' if train_seconds is None else f'{train_seconds:.0f}':>8} {record['answer_ms_p50']:>10.0f}"
        )
    return results


if __name__ == "__main__":
    main()
