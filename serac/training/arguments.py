"""Training settings of the two trained parts, as dataclasses whose fields carry their command-line help."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from serac.counterfactual import CounterfactualConfig
from serac.data import COUNTERFACTUAL_KINDS, IN_SCOPE_KINDS
from serac.data.pairs import ANSWER_STYLES
from serac.scope import ScopeClassifierConfig

__all__ = [
    "PARTS",
    "THRESHOLD_STRATEGIES",
    "CounterfactualTrainingArguments",
    "LoopArguments",
    "ScopeTrainingArguments",
]

#: The parts :func:`serac.training.train_parts` can train.
PARTS = ("scope", "counterfactual")
THRESHOLD_STRATEGIES = ("f_beta", "false_positive_rate")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class LoopArguments:
    """Settings shared by both trainings (the optimisation loop, evaluation, checkpoints)."""

    max_steps: int = field(default=-1, metadata=_help("optimizer steps; -1 trains for num_epochs instead"))
    num_epochs: float = field(
        default=1.0, metadata=_help("passes over the training pairs when max_steps is -1")
    )
    batch_size: int = field(default=32, metadata=_help("pairs per optimizer step (per device)"))
    gradient_accumulation_steps: int = field(
        default=1, metadata=_help("batches accumulated per optimizer step")
    )
    learning_rate: float = field(default=3e-5, metadata=_help("peak learning rate (AdamW, linear decay)"))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay"))
    warmup_ratio: float = field(
        default=0.1, metadata=_help("share of the steps spent warming up the learning rate")
    )
    validation_fraction: float = field(
        default=0.1, metadata=_help("share of the edits held out (when no eval_examples are given)")
    )
    eval_steps: int = field(
        default=200, metadata=_help("evaluate on held-out edits every this many steps; 0: never")
    )
    save_steps: int = field(default=200, metadata=_help("write a resumable checkpoint every this many steps"))
    save_total_limit: int = field(default=2, metadata=_help("checkpoints kept on disk"))
    logging_steps: int = field(default=25, metadata=_help("log the training loss every this many steps"))
    seed: int = field(
        default=0, metadata=_help("seeds data selection, the split, initialisation and shuffling")
    )
    resume: bool = field(
        default=True, metadata=_help("resume from the last checkpoint in output_dir if one exists")
    )
    keep_checkpoints: bool = field(default=False, metadata=_help("keep checkpoints after the part is saved"))
    show_progress: bool = field(default=True, metadata=_help("show progress bars"))
    use_cpu: bool = field(
        default=False, metadata=_help("train on the CPU even when an accelerator is available")
    )

    def __post_init__(self) -> None:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be a positive number of steps or -1, got {self.max_steps}")
        if self.max_steps == -1 and not self.num_epochs > 0:
            raise ValueError(f"num_epochs must be > 0, got {self.num_epochs}")
        for name in (
            "batch_size",
            "gradient_accumulation_steps",
            "save_steps",
            "save_total_limit",
            "logging_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_steps < 0:
            raise ValueError(f"eval_steps must be >= 0, got {self.eval_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("warmup_ratio", "validation_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }


@dataclass
class ScopeTrainingArguments(LoopArguments):
    """Settings of :func:`train_scope_classifier`.

    Example:
        >>> ScopeTrainingArguments(max_steps=300, threshold_strategy="false_positive_rate").target_false_positive_rate
        0.02
    """

    cross_encoder_name_or_path: str | None = field(
        default=None,
        metadata=_help("starting cross-encoder or encoder (default: the packaged all-MiniLM-L6-v2)"),
    )
    embedder_name_or_path: str | None = field(
        default=None, metadata=_help("sentence embedder of the edit store (default: all-MiniLM-L6-v2)")
    )
    max_length: int = field(
        default=ScopeClassifierConfig.max_length, metadata=_help("token limit of an (edit text, query) pair")
    )
    edit_input: str = field(
        default=ScopeClassifierConfig.edit_input,
        metadata=_help(
            "what the cross-encoder reads of an edit: 'query' (without its target) or 'text' (with it)"
        ),
    )
    negatives_per_positive: float = field(default=1.0, metadata=_help("out-of-scope pairs per in-scope pair"))
    hard_negative_fraction: float = field(default=0.5, metadata=_help("share of negatives that are hard"))
    max_positives_per_edit: int | None = field(default=None, metadata=_help("cap on in-scope pairs per edit"))
    statement_fraction: float = field(default=0.2, metadata=_help("share of edits shown in statement form"))
    mined_negatives_per_edit: int = field(
        default=2,
        metadata=_help("nearest other-edit queries (by embedding) added as hard negatives; 0: none"),
    )
    subject_match: bool = field(
        default=ScopeClassifierConfig.subject_match,
        metadata=_help("the classifier only scores queries that name an edit's subject; hard negatives "
                       "and mined negatives are chosen among those"),
    )  # fmt: skip
    last_sentence: bool = field(
        default=ScopeClassifierConfig.last_sentence,
        metadata=_help("the classifier also scores a query's last sentence"),
    )
    mask_subject: bool = field(
        default=ScopeClassifierConfig.mask_subject,
        metadata=_help("the cross-encoder reads the subject's name as a placeholder"),
    )
    subject_candidates: int = field(
        default=ScopeClassifierConfig.subject_candidates,
        metadata=_help("edits found by the subject a query names, scored besides the top_k nearest"),
    )
    context_fraction: float = field(
        default=0.1, metadata=_help("share of training queries asked after an unrelated sentence")
    )
    mining_candidates_per_edit: int = field(
        default=3,
        metadata=_help("queries of each edit embedded as mining candidates (bounds the mining cost)"),
    )
    threshold_strategy: str = field(
        default="f_beta",
        metadata=_help("'f_beta': threshold maximising F-beta on held-out pairs; 'false_positive_rate': the "
                       "lowest threshold whose held-out false-positive rate is at most target_false_positive_rate"),
    )  # fmt: skip
    beta: float = field(default=0.5, metadata=_help("F-beta weight of recall (< 1 favours precision)"))
    target_false_positive_rate: float = field(
        default=0.02, metadata=_help("for threshold_strategy false_positive_rate")
    )
    retrieval_quantile: float = field(
        default=0.01,
        metadata=_help("quantile of held-out in-scope cosine similarities the retrieval filter keeps"),
    )
    retrieval_margin: float = field(default=0.05, metadata=_help("safety margin below that quantile"))
    top_k: int = field(
        default=ScopeClassifierConfig.top_k,
        metadata=_help("candidate edits the saved classifier scores per query"),
    )
    eval_batch_size: int = field(default=64, metadata=_help("pairs per batch when scoring held-out pairs"))
    length_buckets: int = field(
        default=2,
        metadata=_help("forward passes per training batch, each over pairs of similar token length: a batch "
                       "of short pairs padded to its longest is about half padding (the batch and its loss "
                       "are the same; 1: one pass)"),
    )  # fmt: skip
    similarity_weight: float = field(
        default=ScopeClassifierConfig.similarity_weight,
        metadata=_help("how much the cosine of the masked pair moves the saved classifier's scores (0: the "
                       "cross-encoder alone); the threshold is chosen on the cross-encoder's own scores"),
    )  # fmt: skip
    similarity_center: float = field(
        default=ScopeClassifierConfig.similarity_center,
        metadata=_help("the cosine at which that term is zero"),
    )
    trainable_blocks: int | None = field(
        default=None,
        metadata=_help("train only the last N transformer blocks and the classification head (the embeddings "
                       "and the blocks below stay frozen and need no backward pass); None: the whole model"),
    )  # fmt: skip

    def pair_options(self) -> dict:
        """The keywords of :func:`serac.data.scope_pairs` these arguments set (all but the seed)."""
        return {
            "negatives_per_positive": self.negatives_per_positive,
            "hard_negative_fraction": self.hard_negative_fraction,
            "max_positives_per_edit": self.max_positives_per_edit,
            "statement_fraction": self.statement_fraction,
            "subject_match": self.subject_match,
            "context_fraction": self.context_fraction,
        }

    def classifier_config(self, **fields: Any) -> ScopeClassifierConfig:
        """The saved cross-encoder classifier's config as these arguments set it; ``fields`` add what the run
        decides (the starting model, the thresholds)."""
        return ScopeClassifierConfig(
            kind="cross_encoder",
            top_k=self.top_k,
            max_length=self.max_length,
            batch_size=self.eval_batch_size,
            edit_input=self.edit_input,
            subject_match=self.subject_match,
            last_sentence=self.last_sentence,
            mask_subject=self.mask_subject,
            subject_candidates=self.subject_candidates,
            similarity_weight=self.similarity_weight,
            similarity_center=self.similarity_center,
            **fields,
        )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.classifier_config()  # the saved classifier's config owns these checks; build one to run them
        if self.negatives_per_positive < 0:
            raise ValueError(f"negatives_per_positive must be >= 0, got {self.negatives_per_positive}")
        for name in ("hard_negative_fraction", "statement_fraction", "context_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_positives_per_edit is not None and self.max_positives_per_edit < 1:
            raise ValueError(
                f"max_positives_per_edit must be >= 1 or None, got {self.max_positives_per_edit}"
            )
        if self.length_buckets < 1:
            raise ValueError(f"length_buckets must be >= 1, got {self.length_buckets}")
        if self.mined_negatives_per_edit < 0:
            raise ValueError(f"mined_negatives_per_edit must be >= 0, got {self.mined_negatives_per_edit}")
        if self.mining_candidates_per_edit < 1:
            raise ValueError(
                f"mining_candidates_per_edit must be >= 1, got {self.mining_candidates_per_edit}"
            )
        if self.threshold_strategy not in THRESHOLD_STRATEGIES:
            raise ValueError(
                f"threshold_strategy must be one of {THRESHOLD_STRATEGIES}, got {self.threshold_strategy!r}"
            )
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.target_false_positive_rate < 1.0:
            raise ValueError(
                f"target_false_positive_rate must be in [0, 1), got {self.target_false_positive_rate}"
            )
        if not 0.0 <= self.retrieval_quantile < 1.0:
            raise ValueError(f"retrieval_quantile must be in [0, 1), got {self.retrieval_quantile}")
        if self.retrieval_margin < 0:
            raise ValueError(f"retrieval_margin must be >= 0, got {self.retrieval_margin}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.trainable_blocks is not None and self.trainable_blocks < 1:
            raise ValueError(f"trainable_blocks must be >= 1 or None, got {self.trainable_blocks}")


@dataclass
class CounterfactualTrainingArguments(LoopArguments):
    """Settings of :func:`train_counterfactual_model`.

    Example:
        >>> CounterfactualTrainingArguments(max_steps=200, batch_size=8).kinds
        ('edit', 'question', 'cloze', 'paraphrase', 'yes_no')
    """

    batch_size: int = field(default=16, metadata=_help("pairs per optimizer step (per device)"))
    learning_rate: float = field(default=5e-5, metadata=_help("peak learning rate (AdamW, linear decay)"))
    kinds: tuple[str, ...] = field(
        default=COUNTERFACTUAL_KINDS,
        metadata=_help("in-scope query kinds trained on (comma-separated on the CLI)"),
    )
    statement_fraction: float = field(default=0.25, metadata=_help("share of edits shown in statement form"))
    answer_style: str = field(
        default="voice",
        metadata=_help("'voice': a sentence for a question, a continuation for a cloze; 'answer_first': a "
                       "question's answer as the edit writes it, then that sentence; 'bare': the answer span alone"),
    )  # fmt: skip
    question_fraction: float = field(
        default=0.0, metadata=_help("share of edits written as one of their own questions with the answer")
    )
    unusual_target_fraction: float = field(
        default=0.0,
        metadata=_help("share of training edits given an unusual new answer (a full date, a typo, a long name), "
                       "so the model copies an edit's answer as written"),
    )  # fmt: skip
    include_portability: bool = field(
        default=True, metadata=_help("train on single-edit multi-hop questions")
    )
    input_template: str | None = field(
        default=None, metadata=_help("input format with {edit} and {query} (default: the model's own)")
    )
    max_input_length: int | None = field(
        default=None, metadata=_help("token limit of the input (default: the model's)")
    )
    eval_generations: int = field(
        default=200,
        metadata=_help("held-out pairs answered with generate() after training to measure accuracy"),
    )
    trainable_blocks: int | None = field(
        default=None,
        metadata=_help("train only the last N transformer blocks (the rest, embeddings included, stay "
                       "frozen and need no backward pass); None: the whole model"),
    )  # fmt: skip
    low_rank: int | None = field(
        default=None,
        metadata=_help("train each linear layer of the trained blocks through an update of this rank (folded "
                       "into the weights when saved), so a server runs the model's rows through the base "
                       "model's layers; None: the weights themselves"),
    )  # fmt: skip

    def pair_options(self) -> dict:
        """The keywords of :func:`serac.data.counterfactual_pairs` these arguments set (all but the seed)."""
        return {
            "kinds": self.kinds,
            "statement_fraction": self.statement_fraction,
            "include_portability": self.include_portability,
            "answer_style": self.answer_style,
            "unusual_target_fraction": self.unusual_target_fraction,
            "question_fraction": self.question_fraction,
        }

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kinds = tuple(self.kinds.split(",")) if isinstance(self.kinds, str) else tuple(self.kinds)
        if self.answer_style not in ANSWER_STYLES:
            raise ValueError(f"answer_style must be one of {ANSWER_STYLES}, got {self.answer_style!r}")
        unknown = [kind for kind in self.kinds if kind not in IN_SCOPE_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be some of {IN_SCOPE_KINDS}, got {self.kinds}")
        if not 0.0 <= self.statement_fraction <= 1.0:
            raise ValueError(f"statement_fraction must be in [0, 1], got {self.statement_fraction}")
        if not 0.0 <= self.question_fraction <= 1.0:
            raise ValueError(f"question_fraction must be in [0, 1], got {self.question_fraction}")
        if not 0.0 <= self.unusual_target_fraction <= 1.0:
            raise ValueError(f"unusual_target_fraction must be in [0, 1], got {self.unusual_target_fraction}")
        if self.input_template is not None:
            CounterfactualConfig(input_template=self.input_template)  # validates the placeholders
        if self.max_input_length is not None and self.max_input_length < 8:
            raise ValueError(f"max_input_length must be >= 8, got {self.max_input_length}")
        if self.eval_generations < 0:
            raise ValueError(f"eval_generations must be >= 0, got {self.eval_generations}")
        if self.trainable_blocks is not None and self.trainable_blocks < 1:
            raise ValueError(f"trainable_blocks must be >= 1 or None, got {self.trainable_blocks}")
        if self.low_rank is not None and self.low_rank < 1:
            raise ValueError(f"low_rank must be >= 1 or None, got {self.low_rank}")
