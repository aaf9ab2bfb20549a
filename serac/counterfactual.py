"""The counterfactual model: answers an in-scope query given the edit it falls under.

It is a text-to-text model that reads the edit and the query together and produces the answer the edited
model should give. Any ``AutoModelForSeq2SeqLM`` works (T5 or BART, the SERAC paper's choice), and so does a
causal LM, which continues the formatted input. The model owns its input format
(:attr:`CounterfactualConfig.input_template`), used identically in training and generation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList

from serac.edits import Edit
from serac.files import JsonConfigMixin

logger = logging.getLogger(__name__)

COUNTERFACTUAL_CONFIG_NAME = "counterfactual_config.json"
MODEL_FOLDER = "model"

__all__ = ["AnswerCopy", "CounterfactualConfig", "CounterfactualModel", "copied_token", "first_line"]


@dataclass
class CounterfactualConfig(JsonConfigMixin):
    """Settings of a counterfactual model, saved with it.

    Args:
        input_template: how an (edit, query) pair is written for the model; ``{edit}`` is the edit's text
            and ``{query}`` the query.
        max_input_length: token limit of the formatted input (longer inputs are truncated on the left,
            keeping the query).
        max_new_tokens: default answer length when the caller gives none.
        copy_answer_after: once an answer has written this many tokens of its edit's new answer, the rest of
            that answer is written as the edit writes it (:class:`AnswerCopy`); ``0`` leaves decoding alone.
        model_name_or_path: where the underlying model came from, for reference.
    """

    input_template: str = field(
        default="Fact: {edit}\nQuestion: {query}\nAnswer:", metadata={"help": "format of (edit, query)"}
    )
    max_input_length: int = field(default=256, metadata={"help": "token limit of the input"})
    # A sentence that states the answer ("Yes. The industry of Stozand Motors is food processing.") needs
    # more room than the bare answer span did.
    max_new_tokens: int = field(default=32, metadata={"help": "default answer length"})
    copy_answer_after: int = field(
        default=2, metadata={"help": "tokens of the edit's answer written before the rest is copied; 0: off"}
    )
    model_name_or_path: str | None = None

    def __post_init__(self) -> None:
        for placeholder in ("{edit}", "{query}"):
            if placeholder not in self.input_template:
                raise ValueError(f"input_template must contain {placeholder}: {self.input_template!r}")
        if self.max_input_length < 8:
            raise ValueError(f"max_input_length must be >= 8, got {self.max_input_length}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.copy_answer_after < 0:
            raise ValueError(f"copy_answer_after must be >= 0, got {self.copy_answer_after}")


class AnswerCopy:
    """A logits processor: a row that has begun to write its edit's new answer finishes it as the edit writes it.

    A small model that knows "19 July 1979" or "United States Railroad Administration" drifts back to them in
    the middle of an edit's "19 July 1809" or "United States States Railroad Administration"; once a row's
    newest tokens are the first ``after`` tokens of its answer (or more), the next token is the answer's next.
    A row's answer can be given in several writings (as it starts a sentence, capitalized, and inside one);
    the longest begun one is followed. Rows whose answer is unknown (``None``), or shorter than ``after`` + 1
    tokens, are left alone, as is every other stretch of text, so a sentence around the answer, or an answer
    that is not the edit's (a multi-hop question's), is the model's own.

    Args:
        answers: per row, the token ids of the edit's answer as the model writes it (after a space), or a list
            of such writings, or ``None``.
        start: the column where the generated tokens begin.
        after: how many of the answer's tokens must be written before the rest is copied (>= 1).
    """

    def __init__(
        self, answers: Sequence[Sequence[int] | Sequence[Sequence[int]] | None], start: int, after: int
    ) -> None:
        if after < 1:
            raise ValueError(f"after must be >= 1, got {after}")
        self.answers = [_writings(answer) for answer in answers]
        self.start, self.after = start, after

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows_per_answer = max(len(input_ids) // max(len(self.answers), 1), 1)  # num_return_sequences / beams
        for row in range(len(input_ids)):
            writings = self.answers[min(row // rows_per_answer, len(self.answers) - 1)]
            if not writings:
                continue
            token = copied_token(writings, input_ids[row, self.start :].tolist(), self.after)
            if token is not None:
                scores[row] = torch.finfo(scores.dtype).min
                scores[row, token] = 0.0
        return scores


def copied_token(writings: Sequence[Sequence[int]], written: Sequence[int], after: int) -> int | None:
    """The next token of the longest of ``writings`` (an answer's token ids) whose first ``after`` tokens or
    more end ``written``, or ``None`` when none does: what :class:`AnswerCopy` makes a row write next."""
    written = list(written)
    begun = [
        (length, answer[length])
        for answer in writings
        for length in range(min(len(answer) - 1, len(written)), after - 1, -1)
        if written[-length:] == list(answer[:length])
    ]
    return max(begun)[1] if begun else None


def _writings(answer: Any) -> list[list[int]]:
    if not answer:
        return []
    if isinstance(answer[0], int):
        return [list(answer)]
    return [list(writing) for writing in answer if writing]


class CounterfactualModel(torch.nn.Module):
    """A seq2seq or causal LM that answers a query conditioned on an edit.

    It is a ``torch.nn.Module`` holding the underlying model, so moving or casting it (or an
    :class:`~serac.modeling.EditableModel` that holds it) moves the underlying model too.

    Args:
        model: any ``AutoModelForSeq2SeqLM`` or ``AutoModelForCausalLM``.
        tokenizer: its tokenizer.
        config: input format and lengths.

    Example:
        >>> cf = CounterfactualModel.from_pretrained("my-serac/counterfactual_model")  # doctest: +SKIP
        >>> cf.generate([Edit(prompt="{} is a citizen of", subject="Ellie Kemper", target="Croatia")],
        ...             ["Which country is Ellie Kemper a citizen of?"])  # doctest: +SKIP
        ['Croatia']
    """

    def __init__(self, model: Any, tokenizer: Any, config: CounterfactualConfig | None = None) -> None:
        if not hasattr(model, "generate") or not hasattr(model, "config"):
            raise TypeError(f"model must be a Hugging Face generative model, got {type(model).__name__}")
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or CounterfactualConfig(model_name_or_path=getattr(model, "name_or_path", None))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The underlying model's forward pass."""
        return self.model(*args, **kwargs)

    def format_input(self, edit: Edit, query: str) -> str:
        """The model's input for one (edit, query) pair."""
        return self.config.input_template.format(edit=edit.text, query=query.strip())

    def row_inputs(
        self, edit: Edit, query: str, tokenizer: Any = None
    ) -> tuple[list[int], list[list[int]] | None]:
        """What :meth:`generate` reads and follows for one (edit, query) pair of a causal model: the input's
        token ids, and the edit's answer in the writings :class:`AnswerCopy` follows (``None``: copying
        off, or no answer). ``tokenizer`` reads them instead of the model's own (a copy of it, for use on
        another thread)."""
        ids = self._prompt_ids(self.format_input(edit, query), tokenizer)
        if not self.config.copy_answer_after:
            return ids, None
        return ids, self._answer_writings(edit.target, tokenizer)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, edits: Sequence[Edit], queries: Sequence[str], **generation_kwargs: Any) -> list[str]:
        """Answer each query given its edit; returns the answer texts, stripped, in order.

        ``generation_kwargs`` go to the model's ``generate()`` (``max_new_tokens``, ``num_beams``, ...);
        greedy decoding by default.
        """
        if len(edits) != len(queries):
            raise ValueError(f"{len(edits)} edits for {len(queries)} queries")
        if not queries:
            return []
        texts = [self.format_input(edit, query) for edit, query in zip(edits, queries, strict=True)]
        batch = self._tokenize_inputs(texts)
        generation_kwargs.setdefault("max_new_tokens", self.config.max_new_tokens)
        generation_kwargs.setdefault("do_sample", False)
        generation_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        if not generation_kwargs["do_sample"]:
            # Greedy decoding: drop sampling settings a checkpoint's generation_config may carry.
            for key in ("temperature", "top_p", "top_k"):
                generation_kwargs.setdefault(key, None)
        if self.config.copy_answer_after:
            start = 1 if self.is_encoder_decoder else batch["input_ids"].shape[1]
            copy = AnswerCopy(
                [self._answer_writings(edit.target) for edit in edits], start, self.config.copy_answer_after
            )
            processors = LogitsProcessorList(generation_kwargs.get("logits_processor") or [])
            processors.append(copy)
            generation_kwargs["logits_processor"] = processors
        was_training = self.model.training
        self.model.eval()
        try:
            output = self.model.generate(**batch, **generation_kwargs)
        finally:
            self.model.train(was_training)
        sequences = output.sequences if hasattr(output, "sequences") else output
        if not self.is_encoder_decoder:
            sequences = sequences[:, batch["input_ids"].shape[1] :]
        answers = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return [first_line(answer) for answer in answers]

    def continuation_logits(self, edit: Edit, query: str, continuation_ids: Sequence[int]) -> torch.Tensor:
        """Teacher-forced next-token logits of an answer given the edit and the query.

        ``continuation_ids`` are answer tokens in this model's vocabulary. Returns a
        ``(len(continuation_ids) + 1, vocab)`` tensor: row ``k`` is the distribution of answer token ``k``
        given the formatted (edit, query) input and the answer tokens before it; the last row is the
        distribution of the token after the whole continuation.
        """
        text = self.format_input(edit, query)
        continuation = torch.as_tensor(list(continuation_ids), dtype=torch.long, device=self.device)
        if self.is_encoder_decoder:
            batch = self._tokenize_inputs([text])
            start = self.model.generation_config.decoder_start_token_id
            if start is None:
                start = self.model.config.decoder_start_token_id
            if start is None:
                raise ValueError("the counterfactual model has no decoder_start_token_id")
            decoder_ids = torch.cat([continuation.new_tensor([int(start)]), continuation])[None]
            return self.model(**batch, decoder_input_ids=decoder_ids).logits[0]
        prompt = torch.as_tensor(self._prompt_ids(text), dtype=torch.long, device=self.device)
        logits = self.model(input_ids=torch.cat([prompt, continuation])[None]).logits[0]
        return logits[len(prompt) - 1 :]

    # ------------------------------------------------------------------ training
    def training_features(
        self, edits: Sequence[Edit], queries: Sequence[str], answers: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Teacher-forcing tensors (``input_ids``, ``attention_mask``, ``labels``) for a batch.

        Labels are ``-100`` everywhere but the answer tokens (and the end-of-sequence token after them), so
        the loss is the negative log-likelihood of the answer given the edit and the query.
        """
        if not len(edits) == len(queries) == len(answers):
            raise ValueError("edits, queries and answers must have the same length")
        texts = [self.format_input(edit, query) for edit, query in zip(edits, queries, strict=True)]
        eos = self.tokenizer.eos_token_id
        if self.is_encoder_decoder:
            batch = self._tokenize_inputs(texts, padding_side="right")
            targets = [self._answer_ids(answer) + ([eos] if eos is not None else []) for answer in answers]
            width = max(len(t) for t in targets)
            labels = torch.full((len(targets), width), -100, dtype=torch.long)
            for row, target in enumerate(targets):
                labels[row, : len(target)] = torch.tensor(target)
            return {**batch, "labels": labels.to(self.device)}
        rows, label_rows = [], []
        for text, answer in zip(texts, answers, strict=True):
            prompt_ids = self._prompt_ids(text)
            answer_ids = self._answer_ids(" " + answer.strip()) + ([eos] if eos is not None else [])
            rows.append(prompt_ids + answer_ids)
            label_rows.append([-100] * len(prompt_ids) + answer_ids)
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (row, label_row) in enumerate(zip(rows, label_rows, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
            labels[i, : len(label_row)] = torch.tensor(label_row)
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            "labels": labels.to(self.device),
        }

    def target_logprob(self, edit: Edit, query: str, target: str) -> float:
        """Mean log-probability of ``target``'s tokens as the answer to ``query`` given ``edit``.

        Teacher-forced in the model's own input format, the same tokens :meth:`training_features` trains on
        (so the end-of-sequence token after the target counts too).
        """
        features = self.training_features([edit], [query], [target])
        labels = features.pop("labels")
        with torch.no_grad():
            output = self.model(**features, **({"labels": labels} if self.is_encoder_decoder else {}))
        logits = output.logits[0]
        labels = labels[0]
        if not self.is_encoder_decoder:
            # Position i predicts token i + 1.
            logits, labels = logits[:-1], labels[1:]
        keep = labels != -100
        logprobs = torch.log_softmax(logits[keep].float(), dim=-1)
        return float(logprobs.gather(-1, labels[keep].unsqueeze(-1)).mean())

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the model, its tokenizer and the config to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory / MODEL_FOLDER)
        self.tokenizer.save_pretrained(directory / MODEL_FOLDER)
        self.config.save_json(directory / COUNTERFACTUAL_CONFIG_NAME)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        config: CounterfactualConfig | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> CounterfactualModel:
        """Load a saved counterfactual model, or wrap any seq2seq/causal checkpoint (name or path)."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        path = Path(name_or_path)
        if (path / COUNTERFACTUAL_CONFIG_NAME).exists():
            config = config or CounterfactualConfig.load_json(path / COUNTERFACTUAL_CONFIG_NAME)
            model_path = str(path / MODEL_FOLDER)
        elif (path / MODEL_FOLDER).is_dir() and not (path / "config.json").exists():
            # The layout save_pretrained writes, with its config gone: the input format and answer length are
            # lost with it, and the folder is not a checkpoint to load as one.
            raise FileNotFoundError(
                f"the counterfactual model in {path} has no {COUNTERFACTUAL_CONFIG_NAME} beside its {MODEL_FOLDER}/ "
                "folder; restore the file, or save the counterfactual model (or its SERAC folder) again"
            )
        else:
            config = config or CounterfactualConfig(model_name_or_path=str(name_or_path))
            model_path = str(name_or_path)
        model_config = AutoConfig.from_pretrained(model_path)
        is_seq2seq = getattr(model_config, "is_encoder_decoder", False)
        model_class = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = model_class.from_pretrained(model_path, **kwargs)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        return cls(model, tokenizer, config)

    # ------------------------------------------------------------------ internals
    def _tokenize_inputs(self, texts: list[str], padding_side: str | None = None) -> dict[str, torch.Tensor]:
        # Causal models generate after the last input token, so their batches are padded on the left.
        side = padding_side or ("right" if self.is_encoder_decoder else "left")
        # Padded and truncated here rather than through the tokenizer's padding_side/truncation_side: the
        # tokenizer may be shared with the base model and other threads, so it must never be mutated.
        rows = [
            ids[-self.config.max_input_length :]
            for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        ]
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            input_ids[i, columns] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, columns] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}

    def _prompt_ids(self, text: str, tokenizer: Any = None) -> list[int]:
        ids = (tokenizer or self.tokenizer)(text, add_special_tokens=True)["input_ids"]
        return ids[-self.config.max_input_length :]

    def _answer_writings(self, answer: str | None, tokenizer: Any = None) -> list[list[int]] | None:
        """An edit's answer as the model may write it: after a space, and capitalized (an answer first)."""
        if not answer or not answer.strip():
            return None
        answer = answer.strip()
        forms = dict.fromkeys([answer, answer[:1].upper() + answer[1:]])
        return [self._answer_ids(" " + form, tokenizer) for form in forms]

    def _answer_ids(self, answer: str, tokenizer: Any = None) -> list[int]:
        return (tokenizer or self.tokenizer)(answer, add_special_tokens=False)["input_ids"]


def first_line(text: str) -> str:
    """The answer a counterfactual model's output gives: its first non-empty line, stripped."""
    return text.strip().split("\n", 1)[0].strip()
