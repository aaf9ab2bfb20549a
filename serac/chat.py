"""Reading the user's question back out of a chat-formatted prompt.

Instruction-tuned models are prompted through their chat template, so the text a wrapper decodes from
``input_ids`` holds a system prompt and role markers around the question. The markers are derived from the
tokenizer's own template (no per-model rules), and the last user turn is the query.

Templates mark turns in one of two ways: with special tokens (ChatML's ``<|im_start|>user``) or with plain
text (Llama-2's ``[INST]`` and ``<<SYS>>``). Both are read off renders of the template around sentinels, so
a system prompt written inside the first user turn (as Llama-2 does) never enters the query.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

__all__ = ["ChatMarkers", "chat_markers", "chat_turns", "last_user_turn", "last_user_turn_span"]

logger = logging.getLogger(__name__)

_QUERY = "SERAC_QUERY_SENTINEL"
_ANSWER = "SERAC_ANSWER_SENTINEL"
_SYSTEM = "SERAC_SYSTEM_SENTINEL"


class ChatMarkers(NamedTuple):
    """The text around a user turn: ``opening`` before it, ``closing`` after it.

    ``other_openings`` are further texts that can come right before the user's words (the end of a system
    prompt written inside the user turn, a later turn's opening); the one that ends last wins.
    """

    opening: str
    closing: str
    other_openings: tuple[str, ...] = ()


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that refuses these roles or needs other arguments
        return None


def _tail_from_special(text: str, specials: list[str]) -> str:
    """``text`` from its last special token on; all of it (stripped) when it holds none."""
    start = max((text.rfind(token) for token in specials), default=-1)
    return text[start:] if start >= 0 else text.strip()


def chat_markers(tokenizer: Any) -> ChatMarkers | None:
    """The text that opens and closes a user turn in the tokenizer's chat template, if it has one.

    The template is rendered around sentinels. The opening marker runs from the last special token before
    the user's words (``"<|im_start|>user\\n"`` for ChatML), or is the plain text there (``"<</SYS>>"`` after
    a Llama-2 system prompt, ``"[INST]"`` before a later turn); the closing marker runs up to the first
    special token after the words, or is the plain text that follows them (``"[/INST]"``).
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    rendered = _render(tokenizer, [{"role": "user", "content": _QUERY}])
    if rendered is None or _QUERY not in rendered:
        return None
    before, _, after = rendered.partition(_QUERY)
    specials = [token for token in getattr(tokenizer, "all_special_tokens", []) if token]
    closing_ends = [after.find(token) + len(token) for token in specials if after.find(token) >= 0]
    closing = after[: min(closing_ends)] if closing_ends else after.strip()
    openings = [_tail_from_special(before, specials)]
    # The text between an earlier part of the conversation and the user's words: after a system prompt, and
    # after an assistant turn. For plain-text templates these are the only markers that bound the query.
    for messages, earlier in (
        ([{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _QUERY}], _SYSTEM),
        (
            [
                {"role": "user", "content": _SYSTEM},
                {"role": "assistant", "content": _ANSWER},
                {"role": "user", "content": _QUERY},
            ],
            _ANSWER,
        ),
    ):
        text = _render(tokenizer, messages)
        if text is None or earlier not in text or _QUERY not in text:
            continue
        between = text.partition(earlier)[2].partition(_QUERY)[0]
        openings.append(_tail_from_special(between, specials))
    openings = [opening for opening in dict.fromkeys(openings) if opening.strip()]
    if not openings or not closing.strip():
        logger.debug("No chat markers could be derived from the tokenizer's chat template")
        return None
    return ChatMarkers(openings[0], closing, tuple(openings[1:]))


def last_user_turn(text: str, opening: str, closing: str, other_openings: tuple[str, ...] = ()) -> str | None:
    """The content of the last user turn of ``text`` (markers from :func:`chat_markers`), or ``None``.

    The turn starts after whichever opening marker ends last (so the end of a system prompt written inside
    the user turn, as Llama-2 does, bounds it) and ends at the closing marker that follows.
    """
    span = last_user_turn_span(text, opening, closing, other_openings)
    return None if span is None else text[span[0] : span[1]].strip()


def last_user_turn_span(
    text: str, opening: str, closing: str, other_openings: tuple[str, ...] = ()
) -> tuple[int, int] | None:
    """Where the content of the last user turn of ``text`` starts and ends (character offsets, the
    whitespace around the words included), or ``None``; the turn is found as by :func:`last_user_turn`."""
    start = -1
    for marker in (opening, *other_openings):
        found = text.rfind(marker)
        if found >= 0:
            start = max(start, found + len(marker))
    if start < 0:
        return None
    end = text.find(closing, start)
    return start, len(text) if end < 0 else end


def chat_turns(
    text: str, opening: str, closing: str, other_openings: tuple[str, ...] = ()
) -> list[dict[str, str]] | None:
    """The conversation in a chat-formatted ``text`` as messages (``role`` and ``content``), or ``None``.

    User turns are read between the markers (:func:`chat_markers`); the text before the first one is the
    system prompt (``"system"``) and the text between two user turns the reply to the first
    (``"assistant"``), both with the template's markers left in: they are read for the names they hold, and
    a marker holds none.
    """
    markers = [marker for marker in (opening, *other_openings) if marker]
    messages: list[dict[str, str]] = []
    position = 0
    while True:
        starts = [(found, marker) for marker in markers if (found := text.find(marker, position)) >= 0]
        if not starts:
            break
        # The marker that starts first; of two at one place, the longer (it holds the other).
        found, marker = min(starts, key=lambda item: (item[0], -len(item[1])))
        between = text[position:found].strip()
        if between:
            messages.append({"role": "assistant" if messages else "system", "content": between})
        start = found + len(marker)
        end = text.find(closing, start)
        content = text[start:] if end < 0 else text[start:end]
        if messages and messages[-1]["role"] == "user" and not between:
            # A marker inside a user turn (Llama-2's system prompt ends inside the first one): one turn.
            messages[-1]["content"] = content.strip()
        else:
            messages.append({"role": "user", "content": content.strip()})
        if end < 0:
            break
        position = end + len(closing)
    if not any(message["role"] == "user" for message in messages):
        return None
    return messages
