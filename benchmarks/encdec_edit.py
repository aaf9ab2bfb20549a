"""Fix a planted translation error with rank-one encoder-decoder editing (with and without edit-dropout).

No pretrained sequence-to-sequence model is available offline, so this script trains a small T5 from a
config on a synthetic English -> pseudo-French translation grammar in which one error is planted: the
training data translates the unit "yards" as "metres", while the right rendering, "verges", is a unit the
model already produces (the translation of "rods"), as "Yard" is an ordinary German word in the paper's
"yards" -> "Meter" example. An edit is made from one negative example (a sentence with "yards" and the
model's wrong output) and one positive example (another sentence with "yards" and its correct output)
with :class:`serac.editors.encdec.RankOneEncoderDecoderEditor`; every figure below but ``fixed`` is
measured on held-out sentences that neither training, the edit, nor the layer search saw:

* fixed: whether the negative example itself is now translated correctly;
* efficacy: share of held-out "yards" sentences translated exactly as the corrected reference
  (``efficacy_exact``), and share whose output says "verges" (``efficacy_word``);
* task score: sacrebleu BLEU and exact match on held-out sentences without "yards" (``bleu_plain``,
  ``exact_plain``), before and after the edit;
* variants: edit layer chosen by search (the paper's procedure), by saliency (SaLEM), or fixed; and
  edit-dropout p in {0, 0.1, 0.3, 0.5} with and without rescaling, averaged over dropout seeds; and
  the positive example taken from the negative example's own sentence instead of another one.

Usage::

    python benchmarks/encdec_edit.py --out /tmp/encdec_results

Writes ``encdec_results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from serac.editors.encdec import (
    ENCODER_FF_OUTPUT_TEMPLATES,
    EncoderDecoderEdit,
    RankOneEncoderDecoderEditor,
)
from serac.editors.saliency import layer_saliency
from serac.edits import Edit

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# The synthetic language pair. Adjectives follow the noun in the target, as in French.

ADJECTIVES = {
    "old": "vieille", "new": "neuve", "long": "longue", "narrow": "etroite", "wide": "large",
    "green": "verte", "quiet": "calme", "busy": "animee", "dark": "sombre", "small": "petite",
}  # fmt: skip
NOUNS = {
    "road": "route", "bridge": "pont", "wall": "mur", "river": "riviere", "garden": "jardin",
    "field": "champ", "tower": "tour", "street": "rue", "path": "chemin", "fence": "cloture",
}  # fmt: skip
PLACES = {
    "station": "gare", "school": "ecole", "market": "marche", "church": "eglise",
    "harbour": "port", "castle": "chateau", "farm": "ferme", "bank": "banque",
}  # fmt: skip
NAMES = ["anna", "paul", "marie", "louis", "claire", "hugo", "emma", "jules"]
DIMENSIONS = {"long": "de long", "wide": "de large", "high": "de haut", "deep": "de profondeur"}
UNITS = {
    "meters": "metres",
    "feet": "pieds",
    "miles": "milles",
    "inches": "pouces",
    "kilometers": "kilometres",
    "rods": "verges",
}
SPAN = "yards"
WRONG = "metres"  # what the training data says for "yards"
RIGHT = "verges"  # what it should say
NUMBERS = [str(n) for n in range(1, 21)]


def make_sentence(rng: random.Random, unit: str | None = None) -> tuple[str, str, str]:
    """(source, training target, correct target). They differ only when the unit is "yards".

    With ``unit`` given the sentence always carries that unit; without, a quarter of the sentences carry
    no unit at all (plain sentences carry part of the task score).
    """
    units = {**UNITS, SPAN: WRONG}
    kind = rng.randrange(3) if unit is not None else rng.randrange(4)
    unit = unit or rng.choice(list(units))
    num, adj, noun = rng.choice(NUMBERS), rng.choice(list(ADJECTIVES)), rng.choice(list(NOUNS))
    place, name, dim = rng.choice(list(PLACES)), rng.choice(NAMES), rng.choice(list(DIMENSIONS))
    if kind == 0:
        source = f"the {adj} {noun} is {num} {unit} {dim}"
        target = f"le {NOUNS[noun]} {ADJECTIVES[adj]} fait {num} {{u}} {DIMENSIONS[dim]}"
    elif kind == 1:
        source = f"{name} walked {num} {unit} to the {place}"
        target = f"{name} a marche {num} {{u}} jusqu a la {PLACES[place]}"
    elif kind == 2:
        source = f"the {place} is {num} {unit} from the {adj} {noun}"
        target = f"la {PLACES[place]} est a {num} {{u}} du {NOUNS[noun]} {ADJECTIVES[adj]}"
    else:
        source = f"{name} saw the {adj} {noun} near the {place}"
        target = f"{name} a vu le {NOUNS[noun]} {ADJECTIVES[adj]} pres de la {PLACES[place]}"
        return source, target, target
    correct_unit = RIGHT if unit == SPAN else units[unit]
    return source, target.format(u=units[unit]), target.format(u=correct_unit)


def make_splits(
    seed: int, n_train: int, n_heldout: int, n_search: int
) -> dict[str, list[tuple[str, str, str]]]:
    """Training sentences, the edit's two sentences, the layer-search sentences and two held-out sets.

    ``edit`` holds the negative example's sentence and then the positive example's, both with the span.

    The held-out sets share no source with any other split, so what they measure was seen neither in
    training nor by the editor (the edit and the layer search).
    """
    rng = random.Random(seed)
    train = [make_sentence(rng) for _ in range(n_train)]
    seen = {s for s, _, _ in train}
    edit_and_search: list[tuple[str, str, str]] = []
    while len(edit_and_search) < 2 + n_search:
        example = make_sentence(rng, unit=SPAN)
        if example[0] not in {s for s, _, _ in edit_and_search}:
            edit_and_search.append(example)
    seen |= {s for s, _, _ in edit_and_search}
    heldout_plain: list[tuple[str, str, str]] = []
    heldout_span: list[tuple[str, str, str]] = []
    while len(heldout_plain) < n_heldout or len(heldout_span) < n_heldout:
        wants_span = len(heldout_span) < n_heldout and (len(heldout_plain) >= n_heldout or rng.random() < 0.5)
        example = make_sentence(rng, unit=SPAN if wants_span else None)
        if example[0] in seen:
            continue
        bucket = heldout_span if SPAN in example[0].split() else heldout_plain
        if len(bucket) < n_heldout:
            seen.add(example[0])
            bucket.append(example)
    return {
        "train": train,
        "edit": edit_and_search[:2],
        "search": edit_and_search[2:],
        "heldout_plain": heldout_plain,
        "heldout_span": heldout_span,
    }


def build_tokenizer(texts: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: one token per whitespace-separated word, ``</s>`` appended."""
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


def train_model(
    tokenizer: PreTrainedTokenizerFast, pairs: Sequence[tuple[str, str]], *, steps: int, seed: int
) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=128, d_ff=256, d_kv=32, num_heads=4, num_layers=4,
        num_decoder_layers=2, dropout_rate=0.0, decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    model.train()
    for step in range(steps):
        batch = rng.sample(list(pairs), 64)
        enc = tokenizer(
            [s for s, _ in batch], text_target=[t for _, t in batch], return_tensors="pt", padding=True
        )
        enc["labels"][enc["labels"] == tokenizer.pad_token_id] = -100
        loss = model(**enc).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == steps - 1:
            logger.info("step %d loss %.4f", step, loss.item())
    model.eval()
    return model


# ------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def translate(
    model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, sources: Sequence[str]
) -> list[str]:
    outputs = []
    for start in range(0, len(sources), 128):
        batch = tokenizer(list(sources[start : start + 128]), return_tensors="pt", padding=True)
        generated = model.generate(**batch, max_new_tokens=24, do_sample=False, num_beams=1)
        outputs.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
    return [" ".join(o.split()) for o in outputs]


def evaluate(model: Any, tokenizer: Any, splits: dict[str, list[tuple[str, str, str]]]) -> dict[str, float]:
    """Efficacy and task score on the held-out sets, plus whether the edit's own sentence is now right."""
    try:
        import sacrebleu
    except ImportError as error:
        raise SystemExit("BLEU needs sacrebleu: pip install 'serac-memory[bench]'") from error
    span_sources = [s for s, _, _ in splits["heldout_span"]]
    span_refs = [c for _, _, c in splits["heldout_span"]]
    plain_sources = [s for s, _, _ in splits["heldout_plain"]]
    plain_refs = [c for _, _, c in splits["heldout_plain"]]
    span_out = translate(model, tokenizer, span_sources)
    plain_out = translate(model, tokenizer, plain_sources)
    edit_source, _, edit_reference = splits["edit"][0]
    return {
        "efficacy_exact": sum(o == r for o, r in zip(span_out, span_refs, strict=True)) / len(span_refs),
        "efficacy_word": sum(RIGHT in o.split() for o in span_out) / len(span_out),
        "error_rate": sum(WRONG in o.split() for o in span_out) / len(span_out),
        "bleu_plain": sacrebleu.corpus_bleu(plain_out, [plain_refs]).score,
        "exact_plain": sum(o == r for o, r in zip(plain_out, plain_refs, strict=True)) / len(plain_refs),
        "bleu_span": sacrebleu.corpus_bleu(span_out, [span_refs]).score,
        # Not held out: the negative example the edit was made from.
        "edit_example_fixed": float(translate(model, tokenizer, [edit_source])[0] == edit_reference),
    }


def run_variant(
    model: Any,
    tokenizer: Any,
    splits: dict[str, Any],
    edit: EncoderDecoderEdit,
    editor: RankOneEncoderDecoderEditor,
) -> dict[str, Any]:
    """Apply ``edit`` with ``editor``, evaluate, restore (checked bit-identical)."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor.apply(model, tokenizer, [edit])
    scores = evaluate(model, tokenizer, splits)
    stats = editor.last_stats
    editor.restore()
    if not all(torch.equal(before[k], v) for k, v in model.state_dict().items()):
        raise RuntimeError("restore() did not give back bit-identical weights")
    per_edit = stats["per_edit"][0]
    return {
        **scores,
        "layer": stats["layer"],
        "seconds": stats["seconds"],
        "target_nll_after_value_fit": per_edit["target_nll_after"],
        "update_norm": per_edit["update_norm"],
        **({"layer_search": stats["layer_search"]} if "layer_search" in stats else {}),
    }


METRICS = ("efficacy_exact", "efficacy_word", "error_rate", "bleu_plain", "exact_plain", "bleu_span")


def mean_over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (and population std) of each metric over dropout-mask seeds."""
    keys = [*METRICS, "edit_example_fixed"]
    out: dict[str, Any] = {k: statistics.fmean(r[k] for r in rows) for k in keys}
    out.update({f"{k}_std": statistics.pstdev(r[k] for r in rows) for k in keys if len(rows) > 1})
    out["seeds"] = len(rows)
    out["layer"] = rows[0]["layer"]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/encdec_results")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of the small T5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=200, help="held-out sentences per set")
    parser.add_argument("--dropout-seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    splits = make_splits(args.seed, n_train=20_000, n_heldout=args.heldout, n_search=4)
    train_pairs = [(s, t) for s, t, _ in splits["train"]]
    tokenizer = build_tokenizer([s for s, _ in train_pairs] + [t for _, t in train_pairs])
    t0 = time.perf_counter()
    model = train_model(tokenizer, train_pairs, steps=args.steps, seed=args.seed)
    train_seconds = time.perf_counter() - t0
    baseline = evaluate(model, tokenizer, splits)
    logger.info("base model: %s", baseline)

    # The negative example (the model's wrong output) and a positive example (another sentence with the
    # span, correctly translated), and the small key set of the layer search: sentences with the span and
    # their corrected outputs. None of them is in the held-out sets.
    (negative_source, wrong, _), (positive_source, _, right) = splits["edit"]
    edit = EncoderDecoderEdit.from_examples(
        negative=(negative_source, wrong), positive=(positive_source, right), span=SPAN
    )
    search_examples = [(s, c) for s, _, c in splits["search"]]
    locality = [s for s, _, _ in splits["train"][:32]]
    covariance_texts = [s for s, _ in train_pairs[:4000]]
    template = ENCODER_FF_OUTPUT_TEMPLATES["t5"]
    # The profile the editor's layer="saliency" ranks: gradients of the positive example's loss.
    saliency = layer_saliency(
        model, tokenizer, [Edit(prompt=edit.value_source, target=edit.target)], template
    )
    num_layers = model.config.num_layers

    def editor(**kwargs: Any) -> RankOneEncoderDecoderEditor:
        return RankOneEncoderDecoderEditor(
            covariance_texts=covariance_texts,
            search_examples=search_examples,
            locality_sources=locality,
            **kwargs,
        )

    results: dict[str, Any] = {
        "setup": {
            "model": "T5 from config: d_model 128, d_ff 256, 4 encoder + 2 decoder layers",
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_sentences": len(train_pairs),
            "train_steps": args.steps,
            "train_seconds": train_seconds,
            "heldout_span": len(splits["heldout_span"]),
            "heldout_plain": len(splits["heldout_plain"]),
            "edit": {
                "negative": [edit.source, edit.negative_target],
                "positive": [edit.value_source, edit.target],
            },
            "search_examples": search_examples,
            "covariance_texts": len(covariance_texts),
            "editor_config": editor().config.to_dict(),
        },
        "baseline": baseline,
        "saliency_profile": saliency,
        "layer_choice": {},
        "edit_dropout": {},
    }

    # Layer choice, plain rank-one update (p = 0).
    results["layer_choice"]["search"] = run_variant(model, tokenizer, splits, edit, editor(layer="search"))
    results["layer_choice"]["saliency"] = run_variant(
        model, tokenizer, splits, edit, editor(layer="saliency")
    )
    for layer in range(num_layers):
        results["layer_choice"][f"fixed_{layer}"] = run_variant(
            model, tokenizer, splits, edit, editor(layer=layer)
        )
    for name, row in results["layer_choice"].items():
        logger.info(
            "%-10s layer %d: efficacy %.3f (word %.3f) BLEU %.2f",
            name, row["layer"], row["efficacy_exact"], row["efficacy_word"], row["bleu_plain"],
        )  # fmt: skip

    # Edit-dropout at the searched layer, several masks per setting.
    layer = results["layer_choice"]["search"]["layer"]
    for p in (0.0, 0.1, 0.3, 0.5):
        for rescale in (True, False) if p > 0 else (True,):
            rows = [
                run_variant(
                    model,
                    tokenizer,
                    splits,
                    edit,
                    editor(layer=layer, edit_dropout=p, edit_dropout_rescale=rescale, seed=seed),
                )  # fmt: skip
                for seed in range(args.dropout_seeds if p > 0 else 1)
            ]
            key = f"p={p}" + ("" if p == 0 else (",rescale" if rescale else ",no_rescale"))
            results["edit_dropout"][key] = mean_over_seeds(rows)
            row = results["edit_dropout"][key]
            logger.info(
                "%-18s efficacy %.3f (word %.3f) BLEU %.2f exact %.3f",
                key, row["efficacy_exact"], row["efficacy_word"], row["bleu_plain"], row["exact_plain"],
            )  # fmt: skip

    # The positive example from the negative example's own sentence: the key then comes from one context.
    _, _, own_correction = splits["edit"][0]
    same_sentence = EncoderDecoderEdit.from_examples(
        negative=(negative_source, wrong), positive=(negative_source, own_correction), span=SPAN
    )
    results["positive_from_negative_sentence"] = run_variant(
        model, tokenizer, splits, same_sentence, editor(layer=layer)
    )

    results["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encdec_results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    print(format_summary(results))
    print(f"wrote {out / 'encdec_results.json'} in {results['total_seconds']:.0f}s")


def format_summary(results: dict[str, Any]) -> str:
    """A plain-text table of ``results``.

    ``fixed``: the edit's own negative example now translated as the correction (one sentence, the
    only figure not on held-out data). ``efficacy``/``word``/``error``: held-out sentences with the span
    translated exactly right / saying the corrected unit / still saying the wrong one. ``BLEU``,
    ``dBLEU`` (change against the base model) and ``exact``: held-out sentences without the span.
    """
    base = results["baseline"]
    lines = [
        f"held-out: {results['setup']['heldout_span']} sentences with '{SPAN}', "
        f"{results['setup']['heldout_plain']} without",
        f"{'variant':<26} {'layer':>5} {'fixed':>5} {'efficacy':>8} {'word':>6} {'error':>6} {'BLEU':>7} "
        f"{'dBLEU':>7} {'exact':>6}",
    ]

    def line(name: str, row: dict[str, Any], layer: Any) -> str:
        return (
            f"{name:<26} {layer!s:>5} {row['edit_example_fixed']:>5.2f} {row['efficacy_exact']:>8.3f} "
            f"{row['efficacy_word']:>6.3f} {row['error_rate']:>6.3f} {row['bleu_plain']:>7.2f} "
            f"{row['bleu_plain'] - base['bleu_plain']:>7.2f} {row['exact_plain']:>6.3f}"
        )

    lines.append(line("base model (no edit)", base, "-"))
    for name, row in results["layer_choice"].items():
        lines.append(line(f"layer {name}", row, row["layer"]))
    for name, row in results["edit_dropout"].items():
        lines.append(line(f"dropout {name}", row, row["layer"]))
    row = results["positive_from_negative_sentence"]
    lines.append(line("positive = negative sent.", row, row["layer"]))
    profile = ", ".join(f"{value:.3g}" for value in results["saliency_profile"])
    lines.append(f"saliency profile per encoder layer: [{profile}]")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
