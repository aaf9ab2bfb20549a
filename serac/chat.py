"""Reading the user's question back out of a chat-formatted prompt.

Instruction-tuned models are prompted through their chat template, so the text a wrapper decodes from
``input_ids`` holds a system prompt and role markers around the question. The markers are derived from the
tokenizer's own template (no per-model rules), and the last user turn is the query.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chat_markers", "last_user_turn"]


def chat_markers(tokenizer: Any) -> tuple[str, str] | None:
    """The text that opens and closes a user turn in the tokenizer's chat template, if it has one.

    The template is rendered around a sentinel; the opening marker runs from the last special token before
    the sentinel (``"<|im_start|>user\\n"`` for ChatML), the closing one up to the first special token after it.
    Deriving them from the template itself keeps this free of per-model rules.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    sentinel = "SERAC_QUERY_SENTINEL"
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": sentinel}], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a template that needs other roles or arguments: no chat parsing
        return None
    before, found, after = rendered.partition(sentinel)
    specials = [token for token in getattr(tokenizer, "all_special_tokens", []) if token]
    if not found or not specials:
        return None
    opening_start = max((before.rfind(token) for token in specials), default=-1)
    closing_ends = [after.find(token) + len(token) for token in specials if after.find(token) >= 0]
    if opening_start < 0 or not closing_ends:
        return None
    return before[opening_start:], after[: min(closing_ends)]


def last_user_turn(text: str, opening: str, closing: str) -> str | None:
    """The content of the last user turn of ``text`` (markers from :func:`chat_markers`), or ``None``."""
    start = text.rfind(opening)
    if start < 0:
        return None
    content = text[start + len(opening) :]
    end = content.find(closing)
    return (content if end < 0 else content[:end]).strip()
