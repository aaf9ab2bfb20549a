"""The in-context counterfactual model: the base model itself, answering with the edit in its prompt.

SERAC's counterfactual model is a small model trained to answer a query given an edit
(:class:`~serac.counterfactual.CounterfactualModel`). The in-context kind trains nothing: the model that is
served reads the edit, placed in its own prompt, and answers for itself with the caller's generation
settings. Where the edit goes:

* a raw prompt gets it as a prefix, ``"Fact: <edit text>\\n"``, before the prompt's words (after a
  beginning-of-sequence token);
* a conversation given as messages (the server, :meth:`InContextCounterfactual.generate`) gets it as a system
  message before the conversation (:func:`messages_with_edit`; ``chat_placement="user"`` puts it before the
  words of the last user message instead);
* a conversation already rendered to token ids (:class:`~serac.modeling.EditableModel`) gets the prefix
  before the words of its last user turn: the one place every chat template lets us find (:mod:`serac.chat`).

One object serves with or without a model. :class:`~serac.modeling.EditableModel` binds it to its base model
(:meth:`InContextCounterfactual.bind`); a server in proxy mode has no model and sends the request with the edit
in it to its upstream (:func:`messages_with_edit`, :func:`prompt_with_edit`). A SERAC folder saves it as a
config recording ``kind: in-context``, never weights.

Example:
    >>> model = EditableModel.from_pretrained(base_model, "my-serac/", counterfactual="in-context")  # doctest: +SKIP
    >>> messages_with_edit([{"role": "user", "content": "Who leads the UK?"}],
    ...                    Edit.from_statement("Boris Johnson is the prime minister of the UK."))
    [{'role': 'system', 'content': 'Fact: Boris Johnson is the prime minister of the UK.'}, {'role': 'user', 'content': 'Who leads the UK?'}]
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serac.chat import chat_markers, last_user_turn_span
from serac.counterfactual import COUNTERFACTUAL_CONFIG_NAME, CounterfactualModel
from serac.edits import Edit
from serac.files import JsonConfigMixin

logger = logging.getLogger(__name__)

#: The kinds of counterfactual model a SERAC folder can be loaded with.
TRAINED = "trained"
IN_CONTEXT = "in-context"
COUNTERFACTUAL_KINDS = (TRAINED, IN_CONTEXT)
CHAT_PLACEMENTS = ("system", "user")

__all__ = [
    "COUNTERFACTUAL_KINDS",
    "IN_CONTEXT",
    "TRAINED",
    "InContextConfig",
    "InContextCounterfactual",
    "bind_base_model",
    "counterfactual_kind",
    "decision_edits",
    "linked_edits",
    "load_counterfactual_model",
    "messages_with_edit",
    "prompt_with_edit",
]

# Generation arguments that belong to the caller's own batch and output, never to the answering of edited rows.
_BATCH_ARGUMENTS = frozenset(
    {
        "input_ids",
        "attention_mask",
        "inputs_embeds",
        "decoder_input_ids",
        "decoder_attention_mask",
        "token_type_ids",
        "position_ids",
        "cache_position",
        "past_key_values",
        "streamer",
        "generation_config",
    }
)
# Output options: the edited rows' run is read for its tokens only.
_OUTPUT_OPTIONS = {
    "return_dict_in_generate": False,
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
}


@dataclass
class InContextConfig(JsonConfigMixin):
    """Settings of the in-context counterfactual model, saved in its SERAC folder in place of weights.

    Args:
        kind: always ``"in-context"``: what a loader reads to know there are no weights to load.
        prefix_template: the text put before a raw prompt's words, or before the words of the last user turn
            of a rendered conversation; ``{edit}`` is the edit's text.
        system_template: the content of the system message a conversation given as messages gets.
        chat_placement: where a conversation given as messages gets the edit: ``"system"``, a system message
            before the conversation (merged into a leading system message), or ``"user"``, the prefix before
            the words of the last user message.
        max_new_tokens: the answer length of :meth:`InContextCounterfactual.generate` when the caller gives
            none (``EditableModel.generate()`` always uses the caller's budget).
        linked_edits: how many more stored edits the model reads after the routed one, found hop by hop: the
            edits whose subject the routed edit's new answer names, then those whose subject their new answers
            name (:func:`linked_edits`). A question that goes through an edited fact to another ("the head of
            state of the country Ellie Kemper is a citizen of") needs both; 0 reads the routed edit alone.
    """

    kind: str = field(default=IN_CONTEXT, metadata={"help": "what the folder holds: no weights"})
    prefix_template: str = field(default="Fact: {edit}\n", metadata={"help": "before a prompt's words"})
    system_template: str = field(default="Fact: {edit}", metadata={"help": "a chat's system message"})
    chat_placement: str = field(default="system", metadata={"help": "'system' or 'user'"})
    max_new_tokens: int = field(default=32, metadata={"help": "default answer length"})
    linked_edits: int = field(
        default=0, metadata={"help": "stored edits about an edit's new answer read with it, hop by hop"}
    )

    def __post_init__(self) -> None:
        if self.kind != IN_CONTEXT:
            raise ValueError(f"an InContextConfig has kind {IN_CONTEXT!r}, got {self.kind!r}")
        for name in ("prefix_template", "system_template"):
            template = getattr(self, name)
            if not isinstance(template, str) or "{edit}" not in template:
                raise ValueError(f"{name} must be a string containing {{edit}}, got {template!r}")
        if self.chat_placement not in CHAT_PLACEMENTS:
            raise ValueError(f"chat_placement must be one of {CHAT_PLACEMENTS}, got {self.chat_placement!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise TypeError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.linked_edits, bool) or not isinstance(self.linked_edits, int):
            raise TypeError(f"linked_edits must be an integer, got {self.linked_edits!r}")
        if self.linked_edits < 0:
            raise ValueError(f"linked_edits must be >= 0, got {self.linked_edits}")


# ---------------------------------------------------------------------------------------------- prompts
def _as_edits(edits: Edit | Sequence[Edit]) -> list[Edit]:
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    if not edits or not all(isinstance(edit, Edit) for edit in edits):
        raise TypeError("expected an Edit or a non-empty sequence of Edit objects")
    return edits


def _filled(template: str, edits: Edit | Sequence[Edit]) -> str:
    """``template`` once per edit, in order; a template that ends a line keeps one fact per line."""
    filled = [template.format(edit=edit.text) for edit in _as_edits(edits)]
    return "".join(filled) if template.endswith("\n") else "\n".join(filled)


def prompt_with_edit(prompt: str, edit: Edit | Sequence[Edit], config: InContextConfig | None = None) -> str:
    """A raw prompt with the edit (or each of several edits) before it: ``"Fact: <edit text>\\n" + prompt``."""
    config = config or InContextConfig()
    return _filled(config.prefix_template, edit) + prompt


def messages_with_edit(
    messages: Sequence[dict[str, Any]], edit: Edit | Sequence[Edit], config: InContextConfig | None = None
) -> list[dict[str, Any]]:
    """A conversation with the edit in it, the messages given left unchanged.

    With ``chat_placement="system"`` (the default) the edit is a system message before the conversation; a
    conversation that opens with a system (or ``developer``) message gets the edit at the start of that
    message instead, since many chat templates take one system message only, and first. With ``"user"``, the
    prefix goes before the words of the last user message. A content given as text parts gets a text part.
    """
    config = config or InContextConfig()
    result = [dict(message) for message in messages]
    if config.chat_placement == "user":
        users = [index for index, message in enumerate(result) if message.get("role") == "user"]
        if not users:
            raise ValueError("the conversation holds no user message to put the edit in")
        message = result[users[-1]]
        message["content"] = _prepend(_filled(config.prefix_template, edit), message.get("content"))
        return result
    fact = _filled(config.system_template, edit)
    if result and result[0].get("role") in ("system", "developer"):
        result[0]["content"] = _prepend(fact + "\n\n", result[0].get("content"))
        return result
    return [{"role": "system", "content": fact}, *result]


def _prepend(text: str, content: Any) -> Any:
    if isinstance(content, list):
        return [{"type": "text", "text": text}, *content]
    return text + ("" if content is None else str(content))


# ---------------------------------------------------------------------------------------------- the model
class InContextCounterfactual(torch.nn.Module):
    """The base model as its own counterfactual model: it answers an in-scope query with the edit in its prompt.

    It has the interface :class:`~serac.memory.EditMemory` and :class:`~serac.modeling.EditableModel` use of a
    counterfactual model (:meth:`generate`, :meth:`continuation_logits`, ``tokenizer``, ``device``,
    ``config``, :meth:`save_pretrained`), and nothing to train. Its model is the base model it is bound to
    (:meth:`bind`; ``EditableModel`` binds its own); unbound, as in a server's proxy mode, it only describes how
    the edit is put in a prompt. The model is held outside the module's submodules: it belongs to the wrapper
    that binds it, whose ``parameters()`` and ``state_dict()`` list its weights once.

    Args:
        model: the base model (a Hugging Face causal or seq2seq LM), or ``None`` for an unbound one.
        tokenizer: its tokenizer.
        config: where and how the edit is written (:class:`InContextConfig`).

    Example:
        >>> counterfactual = InContextCounterfactual(base_model, tokenizer)  # doctest: +SKIP
        >>> counterfactual.generate([Edit(prompt="{} plays the sport of", subject="LeBron James",
        ...                               target="football")], ["LeBron James plays the sport of"])  # doctest: +SKIP
        ['football.']
    """

    def __init__(
        self, model: Any = None, tokenizer: Any = None, config: InContextConfig | None = None
    ) -> None:
        if config is not None and not isinstance(config, InContextConfig):
            raise TypeError(f"config must be an InContextConfig, got {type(config).__name__}")
        super().__init__()
        self.config = config or InContextConfig()
        self.tokenizer: Any = None
        self._markers: Any = None
        object.__setattr__(self, "_model", None)
        if model is not None:
            self.bind(model, tokenizer)
        elif tokenizer is not None:
            raise TypeError("a tokenizer was given without its model")

    def bind(self, model: Any, tokenizer: Any) -> InContextCounterfactual:
        """Make ``model`` (with ``tokenizer``) the model that answers; returns ``self``."""
        if not hasattr(model, "generate") or not hasattr(model, "config"):
            raise TypeError(f"model must be a Hugging Face generative model, got {type(model).__name__}")
        if tokenizer is None:
            raise TypeError("the in-context counterfactual model needs the base model's tokenizer")
        # Assigned past torch.nn.Module.__setattr__, which would register the base model as a submodule.
        object.__setattr__(self, "_model", model)
        self.tokenizer = tokenizer
        self._markers = chat_markers(tokenizer)
        return self

    @property
    def model(self) -> Any:
        """The bound base model, ``None`` when unbound."""
        return self._model

    @property
    def is_bound(self) -> bool:
        return self._model is not None

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(getattr(self._model, "config", None), "is_encoder_decoder", False))

    @property
    def device(self) -> torch.device:
        if self._model is None:
            return torch.device("cpu")
        return next(self._model.parameters()).device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The bound model's forward pass."""
        return self._require_model()(*args, **kwargs)

    def format_input(self, edit: Edit | Sequence[Edit], query: str) -> str:
        """The prompt the model reads for one (edit, query) pair: the chat template around the conversation
        with the edit (:func:`messages_with_edit`) when the tokenizer has one, else the raw prefixed query."""
        self._require_model()
        if self._markers is not None:
            messages = messages_with_edit([{"role": "user", "content": query.strip()}], edit, self.config)
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt_with_edit(query.strip(), edit, self.config)

    # ------------------------------------------------------------------ answers
    @torch.no_grad()
    def generate(self, edits: Sequence[Edit], queries: Sequence[str], **generation_kwargs: Any) -> list[str]:
        """Answer each query with its edit in the prompt; returns the answers' texts, stripped, in order.

        ``generation_kwargs`` go to the model's ``generate()``; greedy, :attr:`InContextConfig.max_new_tokens`
        new tokens when not given.
        """
        if len(edits) != len(queries):
            raise ValueError(f"{len(edits)} edits for {len(queries)} queries")
        model = self._require_model()
        if not queries:
            return []
        chat = self._markers is not None
        rows = [
            self.tokenizer(self.format_input(edit, query), add_special_tokens=not chat)["input_ids"]
            for edit, query in zip(edits, queries, strict=True)
        ]
        generation_kwargs.setdefault("max_new_tokens", self.config.max_new_tokens)
        generation_kwargs.setdefault("do_sample", False)
        if not generation_kwargs["do_sample"]:
            # Greedy: drop the sampling settings a checkpoint's generation_config may carry.
            for key in ("temperature", "top_p", "top_k"):
                generation_kwargs.setdefault(key, None)
        generation_kwargs.setdefault("pad_token_id", self._pad_token_id())
        batch = self._batch(rows)
        output = model.generate(**batch, **generation_kwargs)
        sequences = output.sequences if hasattr(output, "sequences") else output
        if not self.is_encoder_decoder:
            sequences = sequences[:, batch["input_ids"].shape[1] :]
        return [answer.strip() for answer in self.tokenizer.batch_decode(sequences, skip_special_tokens=True)]

    @torch.no_grad()
    def answer_rows(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        decisions: Sequence[Any],
        generation_config: Any,
        generation_kwargs: dict[str, Any],
    ) -> dict[int, list[list[int]]]:
        """What the model writes after each edited row of a caller's batch once the row holds its edit.

        ``input_ids`` and ``attention_mask`` are the caller's batch, ``decisions`` the scope decision of each
        row (:class:`~serac.scope.ScopeDecision`: the rows in scope are answered, under their edits),
        ``generation_config`` the resolved settings of the caller's call and ``generation_kwargs`` its other
        arguments: the edited rows are generated with them, the caller's budget included (logits processors
        and stopping criteria are copied, since they may keep state; the batch, streamer and output options
        are the caller's own run's). Under sampling the draws come from a fork of the random state, so the
        caller's own run draws as it would without edits. Returns, per edited row, one token sequence per
        returned sample (``num_return_sequences`` under sampling, one otherwise), each cut after its first
        end-of-sequence token: what :class:`~serac.routing.AnswerForcing` makes the caller's run write.
        """
        model = self._require_model()
        config = copy.deepcopy(generation_config)
        if config.max_new_tokens is None:
            # The caller's max_length counts the caller's prompt (or the decoder start token), not the edit.
            max_length = config.max_length if config.max_length is not None else 20  # generate()'s default
            config.max_new_tokens = max_length - (1 if self.is_encoder_decoder else input_ids.shape[1])
        config.max_new_tokens = max(int(config.max_new_tokens), 1)
        config.max_length = None  # the budget is max_new_tokens alone: the edit lengthens the prompt
        copies = int(config.num_return_sequences or 1) if config.do_sample else 1
        config.num_return_sequences = copies
        for name, value in _OUTPUT_OPTIONS.items():
            setattr(config, name, value)
        if config.pad_token_id is None:
            config.pad_token_id = self._pad_token_id()
        extra = {
            name: _copy_or_share(value)
            for name, value in generation_kwargs.items()
            if name not in _BATCH_ARGUMENTS and name not in _OUTPUT_OPTIONS and not hasattr(config, name)
        }
        rows = [row for row, decision in enumerate(decisions) if decision.in_scope]
        prompts = []
        for row in rows:
            ids = input_ids[row] if attention_mask is None else input_ids[row][attention_mask[row].bool()]
            prompts.append(self.with_edit(ids.tolist(), decision_edits(decisions[row]))[0])
        batch = self._batch(prompts)
        device = self.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            output = model.generate(**batch, generation_config=config, **extra)
        sequences = output.sequences if hasattr(output, "sequences") else output
        start = 1 if self.is_encoder_decoder else batch["input_ids"].shape[1]
        eos = _token_ids(config.eos_token_id)
        return {
            row: [
                _cut(sequences[index * copies + copy_index, start:].tolist(), eos, config.pad_token_id)
                for copy_index in range(copies)
            ]
            for index, row in enumerate(rows)
        }

    # ------------------------------------------------------------------ scoring
    def continuation_logits(self, edit: Edit, query: str, continuation_ids: Sequence[int]) -> torch.Tensor:
        """Teacher-forced next-token logits of a continuation after the query with the edit in its prompt.

        The prompt is :meth:`format_input`'s. Returns a ``(len(continuation_ids) + 1, vocab)`` tensor: row
        ``k`` is the distribution of continuation token ``k``, the last row that of the token after it.
        """
        model = self._require_model()
        chat = self._markers is not None
        prompt = self.tokenizer(self.format_input(edit, query), add_special_tokens=not chat)["input_ids"]
        continuation = list(continuation_ids)
        if self.is_encoder_decoder:
            start = model.generation_config.decoder_start_token_id
            if start is None:
                start = model.config.decoder_start_token_id
            decoder = torch.tensor([[int(start), *continuation]], device=self.device)
            encoder = torch.tensor([prompt], device=self.device)
            return model(input_ids=encoder, decoder_input_ids=decoder).logits[0]
        ids = torch.tensor([prompt + continuation], device=self.device)
        return model(input_ids=ids).logits[0, len(prompt) - 1 :]

    def splice(
        self,
        logits: torch.Tensor,
        row: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        split: int,
        decision: Any,
        kwargs: dict[str, Any],
    ) -> None:
        """Overwrite one edited row of a caller's ``forward()`` logits with the model's own on the row with the
        edit in it (the logits :class:`~serac.modeling.EditableModel` returns for an edited row).

        Decoder-only: the row (padding removed) is run with the edit's prefix before its query's words, and
        from the query's last token on (position ``split - 1``, which predicts the first token after the query)
        each caller position gets the logits of the same token there; the query's own positions keep the
        caller's. Seq2seq: the encoder reads the row with the edit, and every decoder position of
        ``kwargs["decoder_input_ids"]`` gets the model's logits.
        """
        model = self._require_model()
        columns = attention_mask[row].bool().nonzero().flatten()
        ids = input_ids[row, columns].tolist()
        if self.is_encoder_decoder:
            decoder_ids = kwargs.get("decoder_input_ids")
            if decoder_ids is None:
                raise ValueError("forward() on a seq2seq base model needs decoder_input_ids or labels")
            encoder = torch.tensor([self.with_edit(ids, decision_edits(decision))[0]], device=self.device)
            edited = model(input_ids=encoder, decoder_input_ids=decoder_ids[row : row + 1]).logits[0]
            logits[row, : edited.shape[0]] = edited.to(logits.dtype)
            return
        prompt, _ = self.with_edit(ids[:split], decision_edits(decision))
        edited = model(input_ids=torch.tensor([prompt + ids[split:]], device=self.device)).logits[0]
        # Caller position j (from the query's last token on) is position j + (the prefix's length) here; with
        # an empty query the first token has no position before it, as in the caller's row.
        first, offset = max(split - 1, 0), len(prompt) - split
        logits[row, columns[first:].to(logits.device)] = edited[first + offset :].to(logits.dtype)

    # ------------------------------------------------------------------ where the edit goes
    def with_edit(self, row: Sequence[int], edit: Edit | Sequence[Edit]) -> tuple[list[int], int]:
        """``row`` (token ids) with the edit's prefix (one per edit) inserted where its query starts, and that
        position."""
        self._require_model()
        row = list(row)
        prefix = self.tokenizer(_filled(self.config.prefix_template, edit), add_special_tokens=False)
        start = self.query_start(row)
        return row[:start] + list(prefix["input_ids"]) + row[start:], start

    def query_start(self, row: Sequence[int]) -> int:
        """The token index where a row's query starts: the first token of the words of its last user turn
        for a chat-formatted row, else the first token after its leading special tokens (a
        beginning-of-sequence token)."""
        self._require_model()
        row = list(row)
        special = set(self.tokenizer.all_special_ids)
        leading = 0
        while leading < len(row) and row[leading] in special:
            leading += 1
        if self._markers is None:
            return leading
        text = self.tokenizer.decode(row, skip_special_tokens=False)
        span = last_user_turn_span(text, *self._markers)
        if span is None:
            return leading
        start, end = span
        while start < end and text[start].isspace():
            start += 1
        # The last token boundary at or before that character: a row's decoded prefix grows with its length.
        low, high = leading, len(row)
        while low < high:
            middle = (low + high + 1) // 2
            if len(self.tokenizer.decode(row[:middle], skip_special_tokens=False)) <= start:
                low = middle
            else:
                high = middle - 1
        return low

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the config (``kind: in-context``) to ``directory``; there are no weights to write."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_json(directory / COUNTERFACTUAL_CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> InContextCounterfactual:
        """An unbound in-context counterfactual model with the config saved in ``directory``."""
        path = Path(directory) / COUNTERFACTUAL_CONFIG_NAME
        if counterfactual_kind(directory) != IN_CONTEXT:
            raise ValueError(f"{path} does not describe an in-context counterfactual model")
        return cls(config=InContextConfig.load_json(path))

    def __repr__(self) -> str:
        model = type(self._model).__name__ if self._model is not None else "unbound"
        return f"InContextCounterfactual(model={model}, chat_placement={self.config.chat_placement!r})"

    # ------------------------------------------------------------------ internals
    def _require_model(self) -> Any:
        if self._model is None:
            raise RuntimeError(
                "this in-context counterfactual model is bound to no model: it answers with the base model "
                "itself, so wrap a base model with it (EditableModel(base_model, tokenizer, memory)), or serve "
                "it in front of an upstream (serac serve --upstream ... --counterfactual in-context)"
            )
        return self._model

    def _pad_token_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def _batch(self, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        # Padded here, on the left for a decoder-only model (it generates after the last token), rather than
        # through the tokenizer's padding_side: the tokenizer is the base model's, shared, never mutated.
        left = not self.is_encoder_decoder
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self._pad_token_id(), dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            columns = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[index, columns] = torch.tensor(list(row), dtype=torch.long)
            attention_mask[index, columns] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}


# ---------------------------------------------------------------------------------------------- linked edits
def linked_edits(edit: Edit, store: Any, limit: int) -> tuple[Edit, ...]:
    """Up to ``limit`` stored edits that follow from ``edit``, hop by hop: those whose subject its new answer
    names (:meth:`~serac.store.EditStore.ids_named_in`), then those whose subject their new answers name.

    Nearest hops first, newest first within a hop; ``edit`` itself and repeats are left out. A multi-hop
    question routed to its first edited fact then reads the facts it leads to, as a person reading the edits
    would follow them (MQuAKE's chains: a country's new head of state after a person's new citizenship).
    """
    if limit <= 0:
        return ()
    seen, found, frontier = {edit.key}, [], [edit]
    while frontier and len(found) < limit:
        next_frontier = []
        for source in frontier:
            if not source.target:
                continue
            for edit_id in store.ids_named_in(source.target):
                try:
                    linked = store.get(edit_id)
                except KeyError:  # removed meanwhile
                    continue
                if linked.key in seen:
                    continue
                seen.add(linked.key)
                found.append(linked)
                next_frontier.append(linked)
                if len(found) == limit:
                    return tuple(found)
        frontier = next_frontier
    return tuple(found)


def decision_edits(decision: Any) -> list[Edit]:
    """The edits an in-scope decision's row is answered with: its edit, then its linked edits."""
    return [decision.edit, *getattr(decision, "linked", ())]


# ---------------------------------------------------------------------------------------------- loading
def counterfactual_kind(directory: str | os.PathLike) -> str:
    """The kind of counterfactual model saved in ``directory``: ``"in-context"`` or ``"trained"``."""
    path = Path(directory) / COUNTERFACTUAL_CONFIG_NAME
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return TRAINED  # the trained model's loader reports what is wrong with the file
        if isinstance(data, dict) and data.get("kind") == IN_CONTEXT:
            return IN_CONTEXT
    return TRAINED


def load_counterfactual_model(
    directory: str | os.PathLike, kind: str | None = None, *, dtype: str | torch.dtype | None = None
) -> CounterfactualModel | InContextCounterfactual:
    """The counterfactual model of a SERAC folder's ``counterfactual_model/`` part.

    ``kind`` ``None`` loads what the folder holds; ``"in-context"`` gives an unbound
    :class:`InContextCounterfactual` whatever the folder holds (a trained model there is not loaded);
    ``"trained"`` loads the trained model, and refuses a folder that holds none. ``dtype`` loads a trained
    model's weights in that type (a ``torch.dtype`` or a name of :data:`serac.offline.DTYPES`) instead of the
    one they were saved in; the in-context kind has no weights of its own (it is the base model).
    """
    if kind is not None and kind not in COUNTERFACTUAL_KINDS:
        raise ValueError(f"counterfactual must be one of {COUNTERFACTUAL_KINDS} or None, got {kind!r}")
    if dtype is not None:
        from serac.offline import as_dtype

        dtype = as_dtype(dtype)
    stored = counterfactual_kind(directory)
    if dtype is not None and (kind or stored) == IN_CONTEXT:
        raise ValueError(
            "the in-context counterfactual model is the base model itself: it has no dtype of its own; "
            "load the base model in the dtype wanted"
        )
    if kind == IN_CONTEXT:
        return (
            InContextCounterfactual.from_pretrained(directory)
            if stored == IN_CONTEXT
            else InContextCounterfactual()
        )
    if stored == IN_CONTEXT:
        if kind == TRAINED:
            raise ValueError(
                f"the counterfactual model in {directory} is the in-context kind: it has no trained weights; "
                "load it with counterfactual='in-context' (or None)"
            )
        return InContextCounterfactual.from_pretrained(directory)
    return CounterfactualModel.from_pretrained(directory, dtype=dtype)


def bind_base_model(
    counterfactual_model: CounterfactualModel | InContextCounterfactual, base_model: Any, tokenizer: Any
) -> CounterfactualModel | InContextCounterfactual:
    """The counterfactual model a wrapper of ``base_model`` answers with: an in-context one bound to that base
    model (it is the base model itself, reading the edit in its prompt), a trained one as it is."""
    if isinstance(counterfactual_model, InContextCounterfactual):
        counterfactual_model.bind(base_model, tokenizer)
    return counterfactual_model


def _token_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set)):
        return {int(token) for token in value}
    if isinstance(value, torch.Tensor):
        return {int(token) for token in value.reshape(-1).tolist()}
    return {int(value)}


def _cut(tokens: list[int], eos: set[int], pad: int | None) -> list[int]:
    """Generated tokens up to and including the first end-of-sequence token; padding after a row that stopped
    otherwise (a stopping criterion) removed."""
    for index, token in enumerate(tokens):
        if token in eos:
            return tokens[: index + 1]
    while tokens and pad is not None and tokens[-1] == pad:
        tokens = tokens[:-1]
    return tokens


def _copy_or_share(value: Any) -> Any:
    """A deep copy of a logits processor or stopping criterion (they may keep state, such as where the prompt
    ended, that the caller's own run needs), or the object itself where it cannot be copied (one holding a
    lock or an event, which is read rather than written)."""
    try:
        return copy.deepcopy(value)
    except Exception:  # any object may refuse to be copied, in any way
        return value
