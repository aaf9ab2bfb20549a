"""The edit descriptor.

An :class:`Edit` says what a model should now answer. It has one of two forms:

* a *prompt edit*: a prompt and its new target. The prompt is a question
  ("What is the country of citizenship of Ellie Kemper?") or a cloze prefix
  ("{} plays the sport of") whose optional ``{}`` placeholder is filled with
  ``subject``, as in ROME and CounterFact;
* a *statement edit*: one free-text sentence ("Boris Johnson is the prime
  minister of the UK."), with no separate target.

Edits are immutable and validated on creation, so every later stage (edit
store, scope classifier, counterfactual model, weight editors) can trust them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Edit", "normalize_text"]

_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, NFKC-normalize and collapse whitespace; used to detect re-edits of one prompt."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WHITESPACE.sub(" ", text).strip().rstrip("?.!:;, ")


def _check_text(name: str, value: Any, *, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise TypeError(f"Edit.{name} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise ValueError(f"Edit.{name} must not be empty")
    # Lone surrogates cannot be encoded (every later save would fail) and NUL cannot be stored in PostgreSQL
    # text: refuse both here, before the edit reaches the store.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"Edit.{name} holds a lone surrogate, not valid Unicode text: {value!r}") from None
    if "\x00" in value:
        raise ValueError(f"Edit.{name} holds a NUL character: {value!r}")
    return value


@dataclass(frozen=True)
class Edit:
    """One edit: a prompt with its new target, or a free-text statement.

    Args:
        prompt: a question or cloze prefix. A ``{}`` placeholder, if present, is filled with ``subject``.
        target: the answer the prompt must now get.
        subject: the entity the edit is about; required when ``prompt`` has a ``{}`` placeholder.
        statement: a free-text sentence stating the edit (use :meth:`from_statement`).

    Example:
        >>> Edit(prompt="{} plays the sport of", subject="LeBron James", target="football").text
        'LeBron James plays the sport of football'
        >>> Edit.from_statement("Boris Johnson is the prime minister of the UK.").text
        'Boris Johnson is the prime minister of the UK.'
    """

    prompt: str | None = None
    target: str | None = None
    subject: str | None = None
    statement: str | None = None

    def __post_init__(self) -> None:
        prompt = _check_text("prompt", self.prompt, allow_none=True)
        target = _check_text("target", self.target, allow_none=True)
        subject = _check_text("subject", self.subject, allow_none=True)
        statement = _check_text("statement", self.statement, allow_none=True)
        if statement is not None:
            if prompt is not None or target is not None:
                raise ValueError("an Edit is either a statement or a prompt with a target, not both")
            if not any(ch.isalnum() for ch in statement):
                raise ValueError(f"Edit.statement has no content: {statement!r}")
        else:
            if prompt is None or target is None:
                raise ValueError("an Edit needs a prompt and a target (or a statement: Edit.from_statement)")
            placeholders = prompt.count("{}")
            if placeholders > 1:
                raise ValueError(f"Edit.prompt may hold at most one '{{}}' placeholder: {prompt!r}")
            if placeholders == 1 and subject is None:
                raise ValueError(f"Edit.prompt {prompt!r} has a '{{}}' placeholder but no subject was given")
            if placeholders == 0 and subject is not None and subject not in prompt:
                raise ValueError(f"Edit.subject {subject!r} does not occur in prompt {prompt!r}")
            query = prompt.replace("{}", subject) if placeholders else prompt
            # A prompt of punctuation alone would normalize to the empty key, shared by every such prompt.
            if not normalize_text(query):
                raise ValueError(f"Edit.prompt has no content: {query!r}")
        for name, value in (
            ("prompt", prompt),
            ("target", target),
            ("subject", subject),
            ("statement", statement),
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def from_statement(cls, statement: str) -> Edit:
        """An edit stated as one free-text sentence."""
        return cls(statement=statement)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Edit:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``KeyError``."""
        unknown = set(data) - {"prompt", "target", "subject", "statement"}
        if unknown:
            raise KeyError(f"unknown Edit fields: {sorted(unknown)}")
        return cls(**{key: value for key, value in data.items() if value is not None})

    def to_dict(self) -> dict[str, str]:
        """The fields that are set, for JSON."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @property
    def is_statement(self) -> bool:
        return self.statement is not None

    @property
    def query(self) -> str:
        """The prompt with its subject filled in (the statement for a statement edit)."""
        if self.statement is not None:
            return self.statement
        assert self.prompt is not None  # guaranteed by __post_init__
        return self.prompt.replace("{}", self.subject) if "{}" in self.prompt else self.prompt

    @property
    def text(self) -> str:
        """The edit as one piece of text: what the edit store embeds and the counterfactual model reads."""
        if self.statement is not None:
            return self.statement
        return f"{self.query} {self.target}"

    @property
    def key(self) -> str:
        """What identifies 'the same prompt': a newer edit with the same key supersedes an older one."""
        return normalize_text(self.query)
