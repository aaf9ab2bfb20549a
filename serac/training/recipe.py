"""The recipe of the default trained parts that ``EditableModel.from_defaults`` uses.

The scope classifier is all-MiniLM-L6-v2 fine-tuned as a cross-encoder; the counterfactual model is
SmolLM2-135M-Instruct with its last transformer blocks fine-tuned to answer a query given an edit (see
docs/training.md for why). Both are trained once from the embedded synthetic data and cached under
:func:`serac.offline.cache_dir`. The recipe is sized for a first run of a few minutes on two CPU cores; before
it trains, :func:`default_parts_dir` says what it trains and about how long that takes on this machine, from a
few timed training steps of each part.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from serac.data import EditExample, SyntheticDataConfig, generate_synthetic_examples
from serac.durable_folder import fsync_tree, replace_folder
from serac.folder import CONFIG_NAME, SeracConfig
from serac.offline import DEFAULT_BASE_MODEL, MissingDefaultModelError, cache_dir
from serac.training.arguments import CounterfactualTrainingArguments, ScopeTrainingArguments
from serac.training.output import train_parts

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PARTS_VERSION",
    "DEFAULT_RECIPE",
    "DEFAULT_TRAINING_SEED",
    "DefaultRecipe",
    "default_parts_dir",
    "default_training_examples",
    "estimate_training_seconds",
    "train_default_parts",
]

#: The seed of the synthetic data and of both trainings.
DEFAULT_TRAINING_SEED = 0


@dataclass(frozen=True)
class DefaultRecipe:
    """How the default parts are trained; ``version`` names the cache folder, so a changed recipe retrains.

    The defaults are the shipped recipe (version 8). Version 7 was ``DefaultRecipe(version=7,
    counterfactual_low_rank=None, counterfactual_learning_rate=3e-4)``: the counterfactual model's top blocks
    trained whole, which answered as well but needed blocks of their own beside the base model's when both
    decode in one batch (benchmarks/README.md, "A counterfactual model of low-rank updates"). Version 6 was
    version 7 with ``indirect_phrasings=0``: the same parts and steps, with no open prompts among the scope
    classifier's in-scope queries; it routed fewer of CounterFact's open prompts, more of zsRE's plain
    paraphrases, and more questions about another relation of a subject named earlier in a conversation
    (benchmarks/README.md, "Open prompts in the scope classifier's training"). Version 5 trained the same scope
    classifier and a counterfactual model with ``counterfactual_answer_style="voice"``,
    ``counterfactual_question_fraction=0.0`` and ``counterfactual_unusual_target_fraction=0.0``: its answers
    held the edit's answer for fewer real edit prompts (benchmarks/README.md, "The default parts"). Version 4,
    the recipe before it, was version 7 with ``version=4, scope_steps=800, scope_learning_rate=3e-5,
    scope_beta=0.5, scope_eval_steps=200, counterfactual_steps=120, counterfactual_learning_rate=1e-4,
    counterfactual_blocks=None, counterfactual_eval_generations=200, counterfactual_eval_steps=200`` and version
    5's counterfactual data: 25.5 min on an idle 2-core CPU, against 7.8 min for version 5
    (benchmarks/first_run.py).
    """

    version: int = 8
    num_edits: int = 3000
    #: Open prompts per training edit whose continuation the edit decides ("Shops in Brnovo take payment in"
    #: for a currency), among the scope classifier's in-scope queries (:attr:`SyntheticDataConfig.indirect_phrasings`).
    #: The counterfactual model's training rows are the same with or without them.
    indirect_phrasings: int = 2
    #: Out-of-scope queries per training edit about a longer name that puts a word before its subject's
    #: ("North X"; :attr:`SyntheticDataConfig.modified_names`). One per edit taught two draws to reject
    #: "North Korea" for an edit of Korea, and routed more real paraphrases, but also more out-of-scope
    #: queries of a dense synthetic store (benchmarks/README.md, "Names inside longer names"), so none.
    modified_names: int = 0
    #: 250 steps of 32 pairs at a high learning rate (800 at 3e-5 before) route MQuAKE-CF and zsRE as well as
    #: the old recipe or better, CounterFact's paraphrase prompts and dense synthetic sets less well
    #: (benchmarks/README.md, "The default parts"); the scores come out less peaked, so the threshold weighs
    #: precision more (F-beta with beta 0.35 rather than 0.5).
    scope_steps: int = 250
    scope_learning_rate: float = 1e-4
    scope_beta: float = 0.35
    scope_eval_steps: int = 0
    #: One forward pass per batch, as version 8 was trained. Two passes over pairs of similar length
    #: (``ScopeTrainingArguments.length_buckets``, the default of ``serac train``) make a step about a fifth
    #: cheaper with the same batches and loss, but draw other dropout masks, and the classifier is a different
    #: draw: trained so, its development-set figures moved by more than the recipe changes measured against
    #: them (benchmarks/README.md, "Two passes per scope batch").
    scope_length_buckets: int = 1
    #: Copying an edit's answer into a sentence is learnt by the top of the network: training the last 8 of
    #: SmolLM2's 30 blocks skips the backward pass through the rest (a step costs about half).
    counterfactual_steps: int = 80
    counterfactual_learning_rate: float = 1e-3
    counterfactual_batch_size: int = 8
    counterfactual_blocks: int | None = 8
    #: Each linear layer of those blocks is trained through an update of rank 32 (its weights stay the base
    #: model's until the update is folded in at the end): the model answers as one trained on the weights
    #: does, and a server runs its rows through the base model's own top blocks plus two thin products.
    counterfactual_low_rank: int | None = 32
    counterfactual_eval_generations: int = 50
    #: 0: no held-out loss pass (2,639 rows) at the end of training; the generations above measure the model.
    counterfactual_eval_steps: int = 0
    #: A question is answered with the edit's answer as written, then a sentence stating it: a small model
    #: writing the sentence straight away drifts to the answer it knows ("19 July 1979" for "19 July 1809").
    counterfactual_answer_style: str = "answer_first"
    #: About a third of the training edits get an unusual answer to copy (a full date, a typo, a long or
    #: numbered name). Half of them, with 3 in 10 edits written as their own questions (as zsRE's are), was
    #: tried and left out: that model answered more CounterFact cloze prompts with "Yes." (5 of 150 edit
    #: prompts missed, against 1).
    counterfactual_unusual_target_fraction: float = 0.35
    counterfactual_question_fraction: float = 0.0
    seed: int = DEFAULT_TRAINING_SEED

    def scope_arguments(self, **overrides) -> ScopeTrainingArguments:
        return ScopeTrainingArguments(
            max_steps=self.scope_steps,
            learning_rate=self.scope_learning_rate,
            beta=self.scope_beta,
            eval_steps=self.scope_eval_steps,
            seed=self.seed,
            mined_negatives_per_edit=4,
            hard_negative_fraction=0.6,
            length_buckets=self.scope_length_buckets,
            **overrides,
        )

    def counterfactual_arguments(self, **overrides) -> CounterfactualTrainingArguments:
        return CounterfactualTrainingArguments(
            max_steps=self.counterfactual_steps,
            batch_size=self.counterfactual_batch_size,
            learning_rate=self.counterfactual_learning_rate,
            trainable_blocks=self.counterfactual_blocks,
            low_rank=self.counterfactual_low_rank,
            eval_generations=self.counterfactual_eval_generations,
            eval_steps=self.counterfactual_eval_steps,
            seed=self.seed,
            answer_style=self.counterfactual_answer_style,
            unusual_target_fraction=self.counterfactual_unusual_target_fraction,
            question_fraction=self.counterfactual_question_fraction,
            **overrides,
        )


DEFAULT_RECIPE = DefaultRecipe()
#: Bump (through ``DefaultRecipe.version``) when the recipe changes, so caches of an older one are not reused.
DEFAULT_PARTS_VERSION = DEFAULT_RECIPE.version

# Measured on a 2-core machine against a whole first run of version 7 (its phases logged), in probe steps of
# the same part: a scope classifier trainer step costs about one probe step (the probe's batch pads to a
# longer pair than the average batch does) and a counterfactual model trainer step about 1.2 (collation,
# clipping, the schedule); the work outside the steps is about 90 for the scope classifier (negative mining,
# held-out scoring; 120 before each text was embedded once and the pairs built in batches, 33 s less on a
# first run of version 8) and 12 for the counterfactual model (its pairs, held-out generations, saving).
_SCOPE_STEP_FACTOR = 1.0
_COUNTERFACTUAL_STEP_FACTOR = 1.2
_SCOPE_FIXED_STEPS = 90
_COUNTERFACTUAL_FIXED_STEPS = 12


def default_training_examples(
    num_edits: int = DEFAULT_RECIPE.num_edits,
    seed: int = DEFAULT_TRAINING_SEED,
    *,
    recipe: DefaultRecipe = DEFAULT_RECIPE,
) -> list[EditExample]:
    """The synthetic edits the default parts are trained on."""
    # Four questions per edit about other relations of its subject: with the subject match, those are the
    # out-of-scope queries that reach the classifier.
    config = SyntheticDataConfig(
        same_subject_other_relation=4,
        indirect_phrasings=recipe.indirect_phrasings,
        modified_names=recipe.modified_names,
    )
    return generate_synthetic_examples(num_edits, seed=seed, config=config)


def default_parts_dir(*, train_if_missing: bool = True, recipe: DefaultRecipe = DEFAULT_RECIPE) -> Path:
    """The SERAC folder of the default trained scope classifier and counterfactual model.

    If the cache does not hold them yet and ``train_if_missing`` is true, they are trained from the embedded
    synthetic data (:func:`train_default_parts`) and cached, after one line on standard error that says what is
    trained, why, and about how long it takes here; otherwise :class:`MissingDefaultModelError`.
    """
    target = cache_dir() / "parts" / f"default-v{recipe.version}"
    if (target / CONFIG_NAME).exists():
        return target
    if not train_if_missing:
        raise MissingDefaultModelError(
            f"the default trained parts are not in {target}; EditableModel.from_defaults() trains them"
        )
    with _quiet_libraries():
        seconds = estimate_training_seconds(recipe)
    print(
        f"serac: training the default scope classifier ({recipe.scope_steps} steps) and counterfactual model "
        f"({recipe.counterfactual_steps} steps), once: {target} does not hold them yet. "
        f"About {_minutes(seconds)} on this machine.",
        file=sys.stderr,
        flush=True,
    )
    return train_default_parts(target, recipe=recipe)


def train_default_parts(
    output_dir: str | os.PathLike,
    *,
    recipe: DefaultRecipe = DEFAULT_RECIPE,
    num_edits: int | None = None,
    scope_steps: int | None = None,
    counterfactual_steps: int | None = None,
    seed: int | None = None,
) -> Path:
    """Train the default parts from synthetic data and write them as a SERAC folder.

    ``recipe`` says how (the keywords override its fields). Training happens in a staging folder next to
    ``output_dir`` with resumable checkpoints; the finished folder is renamed into place, so an interrupted
    run never leaves a folder that looks complete. Standard output gets nothing; standard error one progress
    bar per part.
    """
    overrides = {
        "num_edits": num_edits,
        "scope_steps": scope_steps,
        "counterfactual_steps": counterfactual_steps,
        "seed": seed,
    }
    recipe = replace(recipe, **{key: value for key, value in overrides.items() if value is not None})
    output_dir = Path(output_dir)
    # A fixed staging name (not a random one) lets an interrupted run resume: a part already trained with
    # the same arguments and data is kept, and a part stopped half-way resumes from its checkpoint.
    staging = output_dir.parent / f".{output_dir.name}.training"
    staging.mkdir(parents=True, exist_ok=True)
    logger.info("Training the default scope classifier and counterfactual model into %s", output_dir)
    examples = default_training_examples(recipe.num_edits, recipe.seed, recipe=recipe)
    with _quiet_libraries():
        train_parts(
            staging,
            examples,
            scope_arguments=recipe.scope_arguments(),
            counterfactual_arguments=recipe.counterfactual_arguments(),
            base_model_name_or_path=DEFAULT_BASE_MODEL,
        )
    # Record the base model by its default name, not by the cache path it was converted to.
    SeracConfig(base_model_name_or_path=DEFAULT_BASE_MODEL).save_json(staging / CONFIG_NAME)
    fsync_tree(staging)
    replace_folder(staging, output_dir.absolute())
    return output_dir


def estimate_training_seconds(recipe: DefaultRecipe = DEFAULT_RECIPE, *, probe_steps: int = 3) -> float:
    """About how long :func:`train_default_parts` takes on this machine, from timed training steps.

    Each part's starting model takes one untimed step (warm-up), then ``probe_steps`` timed ones on batches
    of the recipe's size, of which the fastest counts; the estimate adds the work outside the steps, counted
    in steps of the same part. Costs a few seconds.
    """
    from serac import offline

    examples = default_training_examples(64, recipe.seed, recipe=recipe)
    scope_step = _scope_step_seconds(recipe, examples, offline.resolve_embedder(), probe_steps)
    counterfactual_step = _counterfactual_step_seconds(
        recipe, examples, offline.resolve_base_model(None), probe_steps
    )
    scope = (_SCOPE_STEP_FACTOR * recipe.scope_steps + _SCOPE_FIXED_STEPS) * scope_step
    counterfactual = (
        _COUNTERFACTUAL_STEP_FACTOR * recipe.counterfactual_steps + _COUNTERFACTUAL_FIXED_STEPS
    ) * counterfactual_step
    return scope + counterfactual


def _timed_steps(model: torch.nn.Module, loss, learning_rate: float, probe_steps: int) -> float:
    """Seconds of the fastest of ``probe_steps`` AdamW steps on ``loss()`` over ``model``'s trainable
    parameters, after one untimed step (first-call allocations and kernel choices). The fastest, not the mean:
    a step slowed by other work on the machine says nothing about the step itself."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)

    def step() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    times = []
    for _ in range(probe_steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def _scope_step_seconds(
    recipe: DefaultRecipe, examples: list[EditExample], start: str, probe_steps: int
) -> float:
    from sentence_transformers import CrossEncoder

    from serac.data import scope_pairs
    from serac.training.scope import _pair_texts, length_bucketed_loss

    arguments = recipe.scope_arguments(show_progress=False)
    cross_encoder = CrossEncoder(start, num_labels=1, max_length=arguments.max_length)
    model = cross_encoder.model
    # Rows as the training draws them (in scope and out, some after an unrelated sentence), in the order
    # the classifier reads them.
    pairs = scope_pairs(examples, seed=arguments.seed, **arguments.pair_options())
    pairs = pairs.shuffle(seed=arguments.seed)[: arguments.batch_size]
    rows = _pair_texts(arguments.classifier_config(), pairs)
    texts = [rows["pair_edit"], rows["pair_query"]]
    labels = torch.tensor(pairs["label"], dtype=torch.float, device=model.device)
    loss = length_bucketed_loss(cross_encoder, arguments.length_buckets)  # the trainer's loss
    return _timed_steps(model, lambda: loss(texts, labels), arguments.learning_rate, probe_steps)


def _counterfactual_step_seconds(
    recipe: DefaultRecipe, examples: list[EditExample], start: str, probe_steps: int
) -> float:
    from serac.counterfactual import CounterfactualModel
    from serac.data import counterfactual_pairs, edits_from_column
    from serac.training.counterfactual import answer_token_loss
    from serac.training.loop import add_low_rank_updates, freeze_below_top_blocks, transformer_blocks

    arguments = recipe.counterfactual_arguments(show_progress=False)
    counterfactual = CounterfactualModel.from_pretrained(start)
    model = counterfactual.model
    model.requires_grad_(True)  # as training does; then only the top blocks if the recipe says so
    if arguments.trainable_blocks is not None:
        freeze_below_top_blocks(model, arguments.trainable_blocks)
        if arguments.low_rank is not None:
            add_low_rank_updates(transformer_blocks(model)[-arguments.trainable_blocks :], arguments.low_rank)
    pairs = counterfactual_pairs(examples, seed=arguments.seed, **arguments.pair_options())
    pairs = pairs.shuffle(seed=arguments.seed)[: arguments.batch_size]
    features = counterfactual.training_features(
        edits_from_column(pairs["edit"]), pairs["query"], pairs.get("response", pairs["answer"])
    )

    return _timed_steps(
        model, lambda: answer_token_loss(model, features), arguments.learning_rate, probe_steps
    )


def _minutes(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes >= 1.5 else f"{max(1, round(seconds)):.0f} s"


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """No progress bars but the trainers' own (one per part): datasets' map/filter bars, transformers'
    weight-loading bars and its load reports are switched off while the default parts train, and restored
    after."""
    import datasets
    import transformers

    datasets_bars = datasets.utils.logging.is_progress_bar_enabled()
    transformers_bars = transformers.utils.logging.is_progress_bar_enabled()
    verbosity = transformers.utils.logging.get_verbosity()
    # Loading all-MiniLM-L6-v2 as a cross-encoder reports its new classification head: expected here.
    sentence_transformers_logger = logging.getLogger("sentence_transformers")
    sentence_transformers_level = sentence_transformers_logger.level
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    sentence_transformers_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        sentence_transformers_logger.setLevel(sentence_transformers_level)
        transformers.utils.logging.set_verbosity(verbosity)
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            transformers.utils.logging.enable_progress_bar()
