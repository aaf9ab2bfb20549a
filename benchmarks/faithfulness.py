"""Compare our ROME, MEMIT and MEND with an independent implementation (EasyEdit) on identical edits.

Not part of the test suite: it needs a checkout of EasyEdit (https://github.com/zjunlp/EasyEdit), given by
path with ``--easyedit``; nothing of it is shipped with serac. Only its ``easyeditor.models.rome``,
``easyeditor.models.memit`` and (for MEND) ``easyeditor.trainer``, ``easyeditor.dataset.zsre`` and
``easyeditor.models.mend`` modules are loaded (the package's ``__init__`` pulls in every method's
dependencies, so it is bypassed; MEND needs ``higher`` and ``omegaconf`` installed beside it), on the device
given by ``--device`` (the CPU by default).

Both implementations get exactly the same inputs:

* the same model (``serac.offline.load_base_model()``, SmolLM2-135M-Instruct by default), float32;
* the same edits: the first ``--num-edits`` requested rewrites of the MQuAKE-CF file, in file order (as
  ``benchmarks/editors_eval.py`` takes them);
* the same key statistics: our cached second moment ``C`` of each edited down-projection (self-generated
  corpus, ``--stats-samples`` token vectors) is written as an EasyEdit ``layer_stats`` cache file
  (``<stats_dir>/<model>/<dataset>_stats/<module>_float32_mom2_<n>.npz``, a ``SecondMoment`` with
  ``count = n`` and ``mom2 = n * C``), so EasyEdit reads it instead of downloading Wikipedia statistics;
* the same context templates: ours (generated once from the model) are put into EasyEdit's template cache
  (``CONTEXT_TEMPLATES_CACHE``), flat for ROME and as ``[["{}"], generated]`` for MEMIT;
* the same hyperparameters where both have them: our preset for the model (layer(s), value steps, lr,
  weight decay, KL factor, clamp, lambda), with EasyEdit's loss layer set to the last block (so its loss
  is on the model's own logits, as ours) and ``mom2_adjustment`` on.

MEND (``--part mend``) has no statistics or templates; both editor networks are trained here, on the same
training edits (``--mend-train-data``, data specs as ``serac.data.load_examples`` reads them), for the same
number of steps of the same number of edits, on the same matrices (our preset's blocks and projections),
with the same network rank, learning rates, initial edit step and loss weights (edit NLL + c_loc * KL):

* ours: :class:`serac.editors.mend.MENDEditor` with those training settings (cached as the editor caches);
* EasyEdit: its ``EditTrainer`` with its ``MEND`` on a ``ZsreDataset`` holding the same edits (each with one
  rephrasing and one out-of-scope question with its answer, drawn with a fixed seed), then its
  ``MendRewriteExecutor`` on the evaluation model. Its trainer takes the edit loss on the edit prompt only
  (ours: the prompt and a rephrasing) and the KL on the out-of-scope answer's tokens (ours: every token of
  the out-of-scope text); those are its choices and are kept. Three settings are mapped rather than
  copied: it trains one edit per edit step and accumulates gradients over our batch size (its own
  configurations do the same; its loss is a token mean, so factor statistics gathered on multi-edit
  batches would over-scale a single test edit); its step sizes start at minus ours, because it adds the
  step times the pseudo-gradient where ours subtracts it (``--easyedit-ascent`` starts them at plus ours);
  their learning rate is ours times the initial step, because ours learns log step sizes. Its trainer
  also hands the step sizes to the network's optimizer; ``--easyedit-step-sizes`` chooses.

Protocol: ROME and MEND edit one at a time, the model restored after each; MEMIT inserts all edits in one
batch.
Metrics per edit, all greedy decoding:

* efficacy: the continuation of the edit prompt starts with the new target (``normalize_answer``);
* paraphrase: the answer to the rewrite's ``question`` (16 tokens) contains the target as whole words;
* locality: ``--locality-per-edit`` single-hop cloze prompts of cases none of the edits come from keep the
  unedited model's 8-token greedy continuation token for token (ROME: the prompts assigned to that edit,
  evaluated with that edit in; MEMIT: all assigned prompts, with the whole batch in).

``--bos`` makes the tokenizer add its BOS token (``<|im_start|>`` for SmolLM2, whose tokenizer adds none by
default) to every text it encodes, for both implementations and the evaluation alike (edit prompts,
context templates, which are then generated behind BOS too, questions, locality prompts); the key
statistics stay the ones collected without BOS. It checks how much the subject's position at the very
start of a prompt matters.

Example:
    python benchmarks/faithfulness.py --easyedit /path/to/EasyEdit --part rome --num-edits 50 \\
        --data shared/data/mquake-cf-dev.json --out faithfulness_results
    python benchmarks/faithfulness.py --easyedit /path/to/EasyEdit --part mend --num-edits 50 \\
        --mend-train-data synthetic:2000 zsre:shared/data/zsre-train-dev.json --out faithfulness_results
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import random
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from editors_eval import DEFAULT_DATA, load_edits

from serac.editors import get_editor
from serac.editors.base import target_token_ids
from serac.editors.mend.training import load_training_examples
from serac.metrics import answer_matches, normalize_answer

logger = logging.getLogger(__name__)

STATS_DATASET = "serac_generated"


# ---------------------------------------------------------------------------------------------- data


def locality_pool(path: Path, edited_subjects: set[str], edited_prompts: set[str]) -> list[str]:
    """Single-hop cloze prompts of cases with none of the edited subjects, in file order, deduplicated."""
    pool, seen = [], set()
    for case in json.loads(path.read_text()):
        subjects = {r["subject"] for r in case["requested_rewrite"]}
        if subjects & edited_subjects:
            continue
        for hop in case.get("single_hops", []):
            cloze = hop["cloze"]
            if cloze in seen or cloze in edited_prompts or any(s in cloze for s in edited_subjects):
                continue
            seen.add(cloze)
            pool.append(cloze)
    return pool


# ---------------------------------------------------------------------------------------- evaluation


class LazyReference(dict):
    """The unedited model's 8-token greedy answer of each locality prompt, computed on first use.

    Filled while the model is unedited: for ROME each edit's prompts are looked up before the edit is applied.
    """

    def __init__(self, evaluator: Evaluator) -> None:
        super().__init__()
        self.evaluator = evaluator

    def __missing__(self, prompt: str) -> list[int]:
        self[prompt] = self.evaluator.greedy_ids(prompt, 8)
        return self[prompt]


class Evaluator:
    """Greedy decoding of the evaluation prompts (tokenized as the editors tokenize them)."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def greedy_ids(self, text: str, max_new_tokens: int) -> list[int]:
        ids = torch.tensor([list(self.tokenizer(text)["input_ids"])], device=self.model.device)
        output = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return output[0, ids.shape[1] :].tolist()

    def greedy(self, text: str, max_new_tokens: int) -> str:
        return self.tokenizer.decode(self.greedy_ids(text, max_new_tokens), skip_special_tokens=True)

    def metrics(self, record: dict, reference: dict[str, list[int]]) -> dict:
        edit = record["edit"]
        length = len(target_token_ids(self.tokenizer, edit.query, edit.target)) + 2
        continuation = self.greedy(edit.query, length)
        answer = self.greedy(record["question"], 16)
        return {
            "efficacy": normalize_answer(continuation).startswith(normalize_answer(edit.target)),
            "paraphrase": answer_matches(answer, edit.target),
            "locality": [self.greedy_ids(p, 8) == reference[p] for p in record["locality"]],
            "continuation": continuation,
            "answer": answer,
        }


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    efficacy = sum(r["efficacy"] for r in rows)
    paraphrase = sum(r["paraphrase"] for r in rows)
    kept = sum(sum(r["locality"]) for r in rows)
    total = sum(len(r["locality"]) for r in rows)
    return {
        "n": n,
        "efficacy": [efficacy, n],
        "paraphrase": [paraphrase, n],
        "locality": [kept, total],
    }


# ------------------------------------------------------------------------------------- EasyEdit glue


def _stub_packages(root: Path, names: list[str]) -> None:
    """Register EasyEdit's packages ``names`` (dotted, under ``easyeditor``) without running their ``__init__``."""
    for name in names:
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")))]
        sys.modules[name] = module


def import_easyedit(root: Path) -> dict[str, types.ModuleType]:
    """Load EasyEdit's ROME and MEMIT modules from ``root`` without running ``easyeditor/__init__``."""
    if not (root / "easyeditor" / "models" / "rome" / "rome_main.py").exists():
        raise SystemExit(f"{root} does not look like an EasyEdit checkout (no easyeditor/models/rome)")
    _stub_packages(root, ["easyeditor", "easyeditor.models"])
    names = {
        "rome_main": "easyeditor.models.rome.rome_main",
        "rome_hparams": "easyeditor.models.rome.rome_hparams",
        "memit_main": "easyeditor.models.memit.memit_main",
        "memit_hparams": "easyeditor.models.memit.memit_hparams",
        "runningstats": "easyeditor.util.runningstats",
        "layer_stats": "easyeditor.models.rome.layer_stats",
    }
    return {key: importlib.import_module(name) for key, name in names.items()}


def import_easyedit_mend(root: Path) -> dict[str, types.ModuleType]:
    """Load EasyEdit's MEND trainer, zsRE dataset and rewrite executor from ``root``.

    ``easyeditor.trainer``'s ``__init__`` imports its multimodal models (timm, cv2), so the package is
    registered bare and given the algorithm classes its modules import from it.
    """
    if not (root / "easyeditor" / "trainer" / "algs" / "MEND.py").exists():
        raise SystemExit(
            f"{root} does not look like an EasyEdit checkout (no easyeditor/trainer/algs/MEND.py)"
        )
    _stub_packages(root, ["easyeditor", "easyeditor.models", "easyeditor.trainer", "easyeditor.dataset"])
    algs = importlib.import_module("easyeditor.trainer.algs")
    for name in ("MEND", "SERAC", "SERAC_MULTI", "MALMEN"):
        setattr(sys.modules["easyeditor.trainer"], name, getattr(algs, name))
    sys.modules.setdefault("hydra", types.ModuleType("hydra"))  # imported, never used, by mend_main
    if not torch.cuda.is_available():  # the trainer records CUDA memory after every step
        torch.cuda.max_memory_allocated = torch.cuda.max_memory_reserved = lambda *args, **kwargs: 0
    names = {
        "trainer": "easyeditor.trainer.EditTrainer",
        "hparams": "easyeditor.trainer.training_hparams.mend_training_hparams",
        "zsre": "easyeditor.dataset.zsre",
        "mend_main": "easyeditor.models.mend.mend_main",
    }
    return {key: importlib.import_module(name) for key, name in names.items()}


def export_stats(ee, model, moments: dict[int, torch.Tensor], stats_dir: Path, samples: int) -> None:
    """Write our C of each layer where EasyEdit's ``layer_stats`` looks for its cache."""
    model_name = model.config._name_or_path.rsplit("/")[-1]
    rs = ee["runningstats"]
    for layer, moment in moments.items():
        module = f"model.layers.{layer}.mlp.down_proj"
        path = stats_dir / model_name / f"{STATS_DATASET}_stats" / f"{module}_float32_mom2_{samples}.npz"
        stat = rs.CombinedStat(mom2=rs.SecondMoment())
        stat.mom2.count = samples
        stat.mom2.mom2 = (moment.double() * samples).float()
        rs.save_cached_state(str(path), stat, {"sample_size": samples})


def easyedit_module_names(model) -> dict:
    last = model.config.num_hidden_layers - 1
    return {
        "rewrite_module_tmp": "model.layers.{}.mlp.down_proj",
        "layer_module_tmp": "model.layers.{}",
        "mlp_module_tmp": "model.layers.{}.mlp",
        "attn_module_tmp": "model.layers.{}.self_attn",
        "ln_f_module": "model.norm",
        # Tied embeddings (SmolLM2): lm_head.weight is not a separate named parameter.
        "lm_head_module": "model.embed_tokens" if model.config.tie_word_embeddings else "lm_head",
        "v_loss_layer": last,
    }


def _easyedit_value_hparams(model, ours, stats_dir: Path) -> dict:
    """The hyperparameters EasyEdit's ROME and MEMIT share, set to ours (value optimization, statistics)."""
    return {
        "model_name": model.config._name_or_path,
        "device": str(model.device),
        "stats_dir": str(stats_dir),
        "fact_token": "subject_last",
        "v_num_grad_steps": ours.num_steps,
        "v_lr": ours.lr,
        "v_weight_decay": ours.weight_decay,
        "clamp_norm_factor": ours.clamp_norm_factor,
        "kl_factor": ours.kl_factor,
        "mom2_adjustment": True,
        "mom2_dataset": STATS_DATASET,
        "mom2_n_samples": ours.stats_samples,
        "mom2_dtype": "float32",
        **easyedit_module_names(model),
    }


def easyedit_rome_hparams(ee, model, ours, stats_dir: Path):
    return ee["rome_hparams"].ROMEHyperParams(
        alg_name="ROME",
        layers=[ours.layer],
        context_template_length_params=[list(x) for x in ours.context_templates],
        **_easyedit_value_hparams(model, ours, stats_dir),
    )


def easyedit_memit_hparams(ee, model, ours, stats_dir: Path):
    return ee["memit_hparams"].MEMITHyperParams(
        alg_name="MEMIT",
        layers=list(ours.layers),
        layer_selection="all",
        mom2_update_weight=ours.mom2_update_weight,
        **_easyedit_value_hparams(model, ours, stats_dir),
    )


def request_of(record: dict) -> dict:
    edit = record["edit"]
    return {"prompt": edit.prompt, "subject": edit.subject, "target_new": edit.target}


def easyedit_mend_records(specs: list[str], seed: int) -> list[dict]:
    """Our MEND training edits (prompt edits of the ``specs``) as records of EasyEdit's ``ZsreDataset``.

    Each gets one of its in-scope rephrasings and one of its out-of-scope questions with that question's
    answer (EasyEdit's KL covers the answer's tokens), drawn with ``seed``; an edit without an answered
    out-of-scope question gets another edit's prompt and target, as our trainer uses another edit's prompt.
    """
    examples = [e for spec in specs for e in load_training_examples(spec, seed=seed)]
    examples = [e for e in examples if not e.edit.is_statement and e.edit.target]
    rng = random.Random(seed)
    records = []
    for index, example in enumerate(examples):
        edit = example.edit
        rephrasings = [query.text for query in example.in_scope if query.text != edit.query] or [edit.query]
        unrelated = [(query.text, query.answer) for query in example.out_of_scope if query.answer]
        if not unrelated:
            other = examples[(index + rng.randrange(1, len(examples))) % len(examples)].edit
            unrelated = [(other.query, other.target)]
        locality_prompt, locality_answer = rng.choice(unrelated)
        records.append(
            {
                "case_id": index,
                "prompt": edit.query,
                "target_new": edit.target,
                "ground_truth": example.true_answer or "",
                "rephrase_prompt": rng.choice(rephrasings),
                "locality_prompt": locality_prompt,
                "locality_ground_truth": locality_answer,
                "cond": f"{example.true_answer or ''} >> {edit.target} || {edit.query}",
            }
        )
    return records


def easyedit_mend_hparams(
    ee,
    model,
    tokenizer,
    ours,
    inner_params: list[str],
    out: Path,
    seed: int,
    descent: bool = True,
    shared: bool = True,
):
    """EasyEdit's MEND training hyperparameters set to ours (network, learning rates, steps, loss weights).

    ``descent``: start EasyEdit's step sizes at minus ours, so that its untrained network, like ours, takes a
    descent step on the edit loss (EasyEdit's step sizes are plain parameters and may be negative).
    ``shared``: one network (and one set of normalization statistics) per weight shape, as ours shares the
    network; ``False`` gives every matrix its own network and statistics (ours: own statistics, shared network).

    EasyEdit picks the causal-LM code path by the model's *name* ("llama", "gpt", ...), so the model folder
    is linked under a name that starts with the architecture (``llama-...`` for SmolLM2).
    """
    source = Path(model.config._name_or_path).resolve()
    link = out / "easyedit_model" / f"{model.config.model_type}-{source.name}"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(source, target_is_directory=True)
    # EasyEdit puts a space before the targets of tokenizers whose class name says "gpt"; SmolLM2's byte-level
    # BPE marks a leading space inside the token ("Ġ") as GPT-2's does, so it is named as one.
    byte_level = "Ġ" in "".join(tokenizer.convert_ids_to_tokens(tokenizer(" a")["input_ids"]))
    hparams = ee["hparams"].MENDTrainingHparams(
        model_name=str(link),
        model_class=type(model).__name__,
        tokenizer_class="GPT2TokenizerFast" if byte_level else type(tokenizer).__name__,
        tokenizer_name=str(link),
        inner_params=inner_params,
        archive=None,
        alg="MEND",
        lr=ours.learning_rate,
        # EasyEdit adds lr * pseudo-gradient to the weights (ours subtracts it), so with a positive step its
        # untrained, identity network ascends the edit loss until training flips the sign.
        edit_lr=-ours.edit_lr_init if descent else ours.edit_lr_init,
        # Ours learns log step sizes, EasyEdit the step sizes themselves: the same relative change per Adam
        # step needs its lr scaled by the initial step (1e-4 unscaled moves a 1e-3 step by 10% per step).
        lr_lr=ours.lr_learning_rate * ours.edit_lr_init,
        seed=seed,
        debug=False,
        cedit=1.0,  # ours: edit NLL + c_loc * KL
        cloc=ours.locality_weight,
        cbase=1.0,
        dropout=0.0,
        train_base=False,
        no_grad_layers=None,
        one_sided=False,
        n_hidden=1,
        hidden_dim=None,
        init="id",
        norm=True,
        combine=True,
        x_only=False,
        delta_only=False,
        act="relu",
        rank=ours.rank,
        mlp_class="IDMLP",
        shared=shared,
        results_dir=str(out / "easyedit_mend_results"),
        device="cpu" if model.device.type == "cpu" else str(model.device),
        # One edit per edit step, gradients accumulated over our batch size, as EasyEdit's own configurations
        # train (batch_size 1, accumulate_bs 10): its edit loss is a mean over the batch's target tokens, so
        # factor statistics gathered on 4-edit batches would scale a single test edit up about 4x.
        batch_size=1,
        model_save_pt=ours.num_steps * ours.batch_size + 1,
        silent=False,
        log_interval=10,
        eval_log_interval=10,
        final_eval=False,
        val_interval=ours.num_steps * ours.batch_size + 2,  # no validation (nor its checkpoint) in training
        early_stop_patience=ours.num_steps * ours.batch_size + 2,
        early_stop_key="edit/acc_val",
        eval_only=False,
        half=False,
        save=False,
        verbose=True,
        val_batch_size=1,
        accumulate_bs=ours.batch_size,
        val_steps=1,
        opt="Adam",
        grad_clip=100.0,
        # The trainer stops when its 1-based iteration reaches max_iters.
        max_iters=ours.num_steps * ours.batch_size + 1,
    )
    hparams.max_length = ours.max_length
    return hparams


def train_easyedit_mend(
    ee, hparams, records: list[dict], seed: int, archive: Path, step_sizes: str = "own-optimizer"
) -> float:
    """Train EasyEdit's MEND on ``records`` with its ``EditTrainer``; write its state to ``archive``.

    ``step_sizes``: EasyEdit's trainer hands the learned step sizes to the network's optimizer (lr ``lr``)
    as well as to their own (lr ``lr_lr``); ``"network-optimizer"`` keeps that, ``"own-optimizer"`` builds
    the network's optimizer without them, so they learn at ``lr_lr`` only, as ours and the MEND paper's do.
    Returns the training seconds.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hparams.tokenizer_name)
    tokenizer.pad_token_id = tokenizer.eos_token_id  # as EasyEdit's dataset sets for GPT and Llama models
    tokenizer.padding_side = "left"
    datasets = []
    for rows in (records, records[:1]):
        dataset = ee["zsre"].ZsreDataset.__new__(ee["zsre"].ZsreDataset)
        dataset.config, dataset.max_length, dataset.tok = hparams, hparams.max_length, tokenizer
        dataset._data = rows
        datasets.append(dataset)
    random.seed(seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    mend_class = sys.modules["easyeditor.trainer.algs.MEND"].MEND
    outer_parameters = mend_class.outer_parameters
    if step_sizes == "own-optimizer":  # only while the trainer builds its optimizers
        mend_class.outer_parameters = lambda self: list(self.mend.parameters())
    try:
        trainer = ee["trainer"].EditTrainer(hparams, *datasets)
    finally:
        mend_class.outer_parameters = outer_parameters
    trainer.run()
    seconds = time.perf_counter() - start
    torch.save({"model": trainer.model.state_dict(), "seconds": seconds}, archive)
    return seconds


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--easyedit", type=Path, required=True, help="EasyEdit checkout (repository root)")
    parser.add_argument("--part", choices=["rome", "memit", "mend"], required=True)
    parser.add_argument("--impl", nargs="+", choices=["ours", "easyedit"], default=["ours", "easyedit"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("faithfulness_results"))
    parser.add_argument("--num-edits", type=int, default=50)
    parser.add_argument("--locality-per-edit", type=int, default=5)
    parser.add_argument("--stats-samples", type=int, default=5000)
    parser.add_argument(
        "--mend-train-data",
        nargs="+",
        default=["synthetic:2000"],
        help="MEND training data specs, for both implementations (serac.data.load_examples)",
    )
    parser.add_argument(
        "--mend-hparams",
        type=json.loads,
        default={},
        help="JSON of our MEND settings over the preset, for both implementations, e.g. '{\"num_steps\": 3}'",
    )
    parser.add_argument(
        "--easyedit-step-sizes",
        choices=["own-optimizer", "network-optimizer"],
        default="own-optimizer",
        help="which optimizers train EasyEdit's MEND step sizes (see train_easyedit_mend)",
    )
    parser.add_argument(
        "--easyedit-ascent",
        action="store_true",
        help="start EasyEdit's MEND step sizes at +edit_lr_init (its untrained network then ascends the loss)",
    )
    parser.add_argument(
        "--easyedit-per-matrix",
        action="store_true",
        help="EasyEdit's MEND with a network and normalization statistics per matrix (its shared=False)",
    )
    parser.add_argument("--bos", action="store_true", help="the tokenizer adds BOS (see module docstring)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device of the model (both implementations)")
    parser.add_argument(
        "--stats-dir", type=Path, default=None, help="EasyEdit stats folder (default: under --out)"
    )
    parser.add_argument("--unedited", action="store_true", help="also score the unedited model")
    parser.add_argument(
        "--report", action="store_true", help="only merge the results of --impl ours/easyedit runs"
    )
    args = parser.parse_args(argv)
    if args.report:
        report(args.out, args.part, "_bos" if args.bos else "")
        return

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    from serac.offline import load_base_model

    model, tokenizer = load_base_model()
    model.to(args.device)
    tokenizer.padding_side = "right"  # EasyEdit's index arithmetic assumes right padding (ours pads itself)
    if args.bos:
        tokenizer.add_bos_token = True
    ee = (import_easyedit_mend if args.part == "mend" else import_easyedit)(args.easyedit.resolve())
    records = load_edits(args.data)[: args.num_edits]
    evaluator = Evaluator(model, tokenizer)

    subjects = {r["edit"].subject for r in records}
    pool = locality_pool(args.data, subjects, {r["edit"].query for r in records})
    k = args.locality_per_edit
    if len(pool) < k:
        raise SystemExit("not enough locality prompts")
    for i, record in enumerate(records):
        record["locality"] = [pool[(i * k + j) % len(pool)] for j in range(k)]
    all_local = sorted({p for r in records for p in r["locality"]})
    reference = LazyReference(evaluator)  # the unedited model's answers, computed before any edit is in
    for prompt in all_local if args.part == "memit" else []:
        reference[prompt]

    method = args.part
    args.out.mkdir(parents=True, exist_ok=True)
    stats_dir = args.stats_dir or args.out / "easyedit_stats"
    if method == "mend":
        # Our MEND's resolved config (the model's preset and the training data) names the edited matrices.
        editor = get_editor("mend", **(args.mend_hparams | {"train_data": list(args.mend_train_data)}))
        config = editor.resolved_config(model)
        layers = editor.edit_layers(model, tokenizer, config)
        weight_names = [
            f"model.layers.{layer}.mlp.{projection}.weight"
            for layer in layers
            for projection in config.projections
        ]
        templates: list[str] = []
    else:
        # Our editor's resolved config (the model's preset), statistics and context templates.
        probe = get_editor(method, stats_samples=args.stats_samples)
        config = probe.resolved_config(model)
        layers = [config.layer] if method == "rome" else list(config.layers)
        moments = probe.second_moments(model, tokenizer, layers, config)
        templates = probe.context_templates(model, tokenizer, config)
        if "easyedit" in args.impl:
            export_stats(ee, model, moments, stats_dir, args.stats_samples)
        weight_names = [f"model.layers.{layer}.mlp.down_proj.weight" for layer in layers]
    original = {name: model.get_parameter(name).detach().clone() for name in weight_names}

    def restore() -> None:
        with torch.no_grad():
            for name, value in original.items():
                model.get_parameter(name).copy_(value)

    def updates() -> dict[str, torch.Tensor]:
        return {name: (model.get_parameter(name) - original[name]).detach().clone() for name in weight_names}

    suffix = "_bos" if args.bos else ""
    result: dict = {
        "command": " ".join(["python benchmarks/faithfulness.py", *(argv or sys.argv[1:])]),
        "config": {
            key: (value if isinstance(value, (int, float, str, list, tuple, type(None))) else str(value))
            for key, value in vars(config).items()
        },  # fmt: skip
        "context_templates": templates,
        "num_locality_prompts": len(all_local),
        "bos": args.bos,
        "device": str(model.device),
        "torch": torch.__version__,
    }
    if args.unedited:
        result["unedited"] = summarize([evaluator.metrics(r, reference) for r in records])
        logger.info("unedited: %s", result["unedited"])

    def one_edit_applier(impl: str) -> Callable[[dict], dict]:
        """Applies one record's edit to ``model`` with ``impl``; returns extra per-edit figures."""
        if method == "rome" and impl == "ours":
            rome = get_editor("rome", stats_samples=args.stats_samples)

            def apply(record: dict) -> dict:
                rome.apply(model, tokenizer, [record["edit"]])
                return {"nll": rome.last_stats["target_nll"][0]}

        elif method == "rome":
            ee["rome_main"].CONTEXT_TEMPLATES_CACHE = list(templates)
            hparams = easyedit_rome_hparams(ee, model, config, stats_dir)

            def apply(record: dict) -> dict:
                ee["rome_main"].apply_rome_to_model(model, tokenizer, [request_of(record)], hparams)
                return {}

        elif impl == "ours":
            start = time.perf_counter()
            editor.load_network(model, tokenizer)  # trained now unless cached
            result["ours_training_seconds"] = round(time.perf_counter() - start, 1)

            def apply(record: dict) -> dict:
                editor.apply(model, tokenizer, [record["edit"]])
                return {"edit_loss": editor.last_stats["edit_loss_before"]}

        else:
            hparams = easyedit_mend_hparams(
                ee,
                model,
                tokenizer,
                config,
                weight_names,
                args.out,
                seed=0,
                descent=not args.easyedit_ascent,
                shared=not args.easyedit_per_matrix,
            )
            # The trained network is kept per training setting, so a rerun with other settings retrains.
            setting = json.dumps(
                [sorted(vars(hparams).items()), list(args.mend_train_data), args.easyedit_step_sizes],
                default=str,
            )
            archive = args.out / f"easyedit_mend-{hashlib.sha256(setting.encode()).hexdigest()[:12]}.pt"
            if not archive.exists():
                records_ = easyedit_mend_records(list(args.mend_train_data), seed=0)
                logger.info("training EasyEdit's MEND on %d edits", len(records_))
                result["easyedit_training_seconds"] = round(
                    train_easyedit_mend(ee, hparams, records_, 0, archive, args.easyedit_step_sizes), 1
                )
            hparams.archive = str(archive)
            executor = ee["mend_main"].MendRewriteExecutor()
            model.requires_grad_(True)  # EasyEdit's MEND turns off all but its inner parameters

            def apply(record: dict) -> dict:
                edit = record["edit"]
                request = {"prompt": edit.query, "target_new": edit.target}
                executor.apply_to_model(model, tokenizer, [request], hparams)
                return {}

        return apply

    deltas: dict[str, list[dict[str, torch.Tensor]]] = {}
    for impl in args.impl:
        rows: list[dict] = []
        deltas[impl] = []
        if method == "memit":
            start = time.perf_counter()
            if impl == "ours":
                get_editor("memit", stats_samples=args.stats_samples).apply(
                    model, tokenizer, [r["edit"] for r in records]
                )
            else:
                ee["memit_main"].CONTEXT_TEMPLATES_CACHE = [["{}"], list(templates[1:])]
                hparams = easyedit_memit_hparams(ee, model, config, stats_dir)
                ee["memit_main"].apply_memit_to_model(
                    model, tokenizer, [request_of(r) for r in records], hparams
                )
            deltas[impl].append(updates())
            rows = [evaluator.metrics(r, reference) for r in records]
            restore()
        else:
            apply = one_edit_applier(impl)
            start = time.perf_counter()
            for index, record in enumerate(records):
                for prompt in record["locality"]:
                    reference[prompt]  # before the edit is in
                extra = apply(record)
                deltas[impl].append(updates())
                rows.append(evaluator.metrics(record, reference) | extra)
                restore()
                logger.info("%s %s -> %r", impl, record["edit"].query, rows[-1]["continuation"])
                if len(args.impl) == 1:  # partial results, in case the run is cut short
                    torch.save(deltas[impl][-1], args.out / f"{method}{suffix}_{impl}_update{index}.pt")
                    named = [
                        {"query": r["edit"].query, "target": r["edit"].target} | row
                        for r, row in zip(records, rows, strict=False)
                    ]
                    partial = result | {impl: summarize(rows), f"{impl}_rows": named, "done": index + 1}
                    (args.out / f"{method}{suffix}_{impl}.json").write_text(json.dumps(partial, indent=1))
        result[impl] = summarize(rows) | {"seconds": round(time.perf_counter() - start, 1)}
        result[f"{impl}_rows"] = [
            {"query": r["edit"].query, "target": r["edit"].target} | row
            for r, row in zip(records, rows, strict=True)
        ]
        logger.info("%s: %s", impl, result[impl])
        if len(args.impl) > 1:
            (args.out / f"{method}{suffix}.json").write_text(json.dumps(result, indent=1))
        else:
            # One implementation per process (to run them in parallel): keep the updates for --report.
            if method == "memit":
                torch.save(deltas[impl][0], args.out / f"{method}{suffix}_{impl}_update0.pt")
            (args.out / f"{method}{suffix}_{impl}.json").write_text(
                json.dumps(result | {"done": len(records)}, indent=1)
            )

    if {"ours", "easyedit"} <= deltas.keys():
        result |= compare_updates(deltas["ours"], deltas["easyedit"])
        (args.out / f"{method}{suffix}.json").write_text(json.dumps(result, indent=1))
    print(result["command"])
    print(table(result, method, args.impl))


def compare_updates(ours: list[dict], theirs: list[dict]) -> dict:
    """Cosine and norm ratio (ours / EasyEdit) of the weight updates, per edit (or batch) and layer."""
    comparison = []
    for ours_d, theirs_d in zip(ours, theirs, strict=True):
        for name in ours_d:
            a, b = ours_d[name].flatten().double(), theirs_d[name].flatten().double()
            cos = float(a @ b / (a.norm() * b.norm()).clamp(min=1e-30))
            ratio = float(a.norm() / b.norm().clamp(min=1e-30))
            comparison.append({"weight": name, "cosine": cos, "norm_ratio": ratio})
    cosines = sorted(c["cosine"] for c in comparison)
    ratios = sorted(c["norm_ratio"] for c in comparison)
    return {
        "update_comparison": comparison,
        "update_cosine_median": cosines[len(cosines) // 2],
        "update_norm_ratio_median": ratios[len(ratios) // 2],
    }


def report(out: Path, method: str, suffix: str) -> None:
    """Merge the results of separate ``--impl ours`` / ``--impl easyedit`` processes (same other arguments).

    Runs cut short are compared on the edits both finished (the first ``done`` of each).
    """
    parts = {
        impl: json.loads((out / f"{method}{suffix}_{impl}.json").read_text()) for impl in ("ours", "easyedit")
    }
    done = min(part["done"] for part in parts.values())
    merged: dict = {"commands": [part["command"] for part in parts.values()], "done": done}
    for impl, part in parts.items():
        for key, value in part.items():
            if key not in ("command", "done", "ours", "easyedit", "ours_rows", "easyedit_rows"):
                merged.setdefault(key, value)
        rows = part[f"{impl}_rows"] if method == "memit" else part[f"{impl}_rows"][:done]
        merged[impl], merged[f"{impl}_rows"] = summarize(rows), rows
    count = 1 if method == "memit" else done
    load = lambda impl, i: torch.load(out / f"{method}{suffix}_{impl}_update{i}.pt")  # noqa: E731
    merged |= compare_updates(
        [load("ours", i) for i in range(count)], [load("easyedit", i) for i in range(count)]
    )
    (out / f"{method}{suffix}.json").write_text(json.dumps(merged, indent=1))
    print("\n".join(merged["commands"]))
    print(table(merged, method, ["ours", "easyedit"]))
    print(
        f"weight updates, ours against EasyEdit: cosine median {merged['update_cosine_median']:.3f}, "
        f"norm ratio median {merged['update_norm_ratio_median']:.3f}"
    )


def table(result: dict, method: str, impls: list[str]) -> str:
    def cell(pair: list[int]) -> str:
        return f"{pair[0] / pair[1]:.2f} ({pair[0]}/{pair[1]})"

    lines = [f"| {method.upper()} | efficacy | paraphrase | locality |", "|---|---|---|---|"]
    for name in ["unedited", *impls]:
        if name in result:
            s = result[name]
            lines.append(
                f"| {name} | {cell(s['efficacy'])} | {cell(s['paraphrase'])} | {cell(s['locality'])} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
