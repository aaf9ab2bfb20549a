"""Routing a conversation: the text the scope classifier reads when the last user turn leans on earlier ones.

In a chat the last user turn often does not stand alone: the subject was named a few turns earlier ("I'm
reading about Ellie Kemper." ... "Which country is she a citizen of?"), or the question came first and the
last turn only says how to answer it ("Please answer in one word."). A router that reads the last turn
alone misses both. :func:`routing_query` reads the turns before it, in two steps, each taken only when the
last turn needs it, so that a turn that stands alone (and with it every new topic) is routed exactly as
before:

1. A last user turn that only says how to answer (short, no question mark, opening with a word of
   instruction: "Please answer in one word.") is a follow-up: routing reads the latest user question of the
   conversation.
2. A question that names no entity but refers to one (a third-person pronoun: "she", "its", "them") is
   read with the latest entity named in the turns before it, put in place of the pronoun ("Which country is
   Ellie Kemper a citizen of?"). An entity that has edits in the store is preferred to any other name.

The scope classifier then judges the resulting question as it judges any other, so another relation of the
same entity ("Where was she born?") stays out of the scope of a citizenship edit. :class:`RoutingQuery`
records which turn's text decided, for ``last_routing``, traces and the server's routing field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serac.edits import mentions_subject
from serac.store import EditStore

__all__ = ["Turn", "RoutingQuery", "as_turns", "routing_query", "routing_query_of_text"]

#: How many turns before the last one are read for the entity or the question it follows.
DEFAULT_WINDOW = 6

_QUESTION_WORDS = frozenset(
    [
        "who",
        "whom",
        "whose",
        "what",
        "which",
        "when",
        "where",
        "why",
        "how",
        "is",
        "are",
        "was",
        "were",
        "do",
        "does",
        "did",
        "can",
        "could",
        "will",
        "would",
        "should",
        "has",
        "have",
        "had",
        "name",
        "list",
        "tell",
        "give",
    ]
)
_POSSESSIVES = ("his", "its", "their")
_PRONOUN = re.compile(r"\b(he|she|it|they|him|her|them|his|its|their)\b", re.IGNORECASE)
_WORD = re.compile(r"[\w'’.-]+")


@dataclass(frozen=True)
class Turn:
    """One message of a conversation: ``role`` (``"user"``, ``"assistant"``, ``"system"``) and its text."""

    role: str
    content: str


@dataclass(frozen=True)
class RoutingQuery:
    """The text a conversation is routed by, and where it came from.

    Args:
        text: what the scope classifier reads.
        turn: the index of the user turn whose question ``text`` is (the last user turn unless it was a
            follow-up).
        entity: the entity put in place of a pronoun, taken from an earlier turn (``None``: none was).
        entity_turn: the turn the entity was taken from.
    """

    text: str
    turn: int
    entity: str | None = None
    entity_turn: int | None = None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready account, for routing records."""
        found = {"query": self.text, "turn": self.turn}
        if self.entity is not None:
            found.update(entity=self.entity, entity_turn=self.entity_turn)
        return found


def as_turns(messages: Sequence[Mapping[str, Any] | Turn]) -> list[Turn]:
    """Chat messages (``{"role": ..., "content": ...}`` mappings, as the OpenAI API and chat templates take
    them) as :class:`Turn` objects; a message whose content is not a string is read as empty."""
    turns = []
    for message in messages:
        if isinstance(message, Turn):
            turns.append(message)
            continue
        content = message.get("content")
        turns.append(Turn(str(message.get("role", "")), content if isinstance(content, str) else ""))
    return turns


def routing_query(
    turns: Sequence[Turn], store: EditStore | None = None, *, window: int = DEFAULT_WINDOW
) -> RoutingQuery:
    """The text that routes ``turns`` (see the module docstring): the last user turn, completed from the
    turns before it when it leans on them. ``store`` lets entities with edits win over other names."""
    users = [index for index, turn in enumerate(turns) if turn.role == "user"]
    if not users:
        raise ValueError("a conversation to route needs a user turn")
    last = users[-1]
    earliest = max(0, last - window)
    question_turn = last
    if _only_instructs(turns[last].content):
        earlier = [index for index in users[:-1] if index >= earliest and _asks(turns[index].content)]
        if earlier:
            question_turn = earlier[-1]
    question = turns[question_turn].content.strip()
    if _names_an_entity(question) or not _PRONOUN.search(question):
        return RoutingQuery(question, question_turn)
    found = _referent(turns, question_turn, earliest, store)
    if found is None:
        return RoutingQuery(question, question_turn)
    index, entity = found
    return RoutingQuery(_resolve_pronoun(question, entity), question_turn, entity, index)


def _referent(
    turns: Sequence[Turn], before: int, earliest: int, store: EditStore | None
) -> tuple[int, str] | None:
    """The turn and entity a pronoun most likely points back to: the latest subject of a stored edit named
    in any turn; else the latest name in the user's own turns; else in the others' (an assistant's names
    are as often its answers as the entity asked about)."""
    earlier = range(before - 1, earliest - 1, -1)
    if store is not None and len(store):
        for index in earlier:
            if turns[index].role == "system":
                continue
            subject = _latest_subject(turns[index].content, store)
            if subject is not None:
                return index, subject
    for users_only in (True, False):
        for index in earlier:
            if turns[index].role == "system" or (turns[index].role == "user") != users_only:
                continue
            runs = _name_runs(turns[index].content)
            if runs:
                return index, runs[-1][1]
    return None


def routing_query_of_text(
    text: str, store: EditStore | None = None, *, window: int = DEFAULT_WINDOW
) -> RoutingQuery | None:
    """A plain prompt of several sentences read as a conversation of one user, sentence by sentence: the
    completed question when its last sentence leans on the ones before it, ``None`` when the prompt is
    routed as it is (one sentence, or a last sentence that stands alone)."""
    sentences = [sentence for sentence in _SENTENCE_END.split(text.strip()) if sentence.strip()]
    if len(sentences) < 2:
        return None
    found = routing_query([Turn("user", sentence) for sentence in sentences], store, window=window)
    if found.entity is None and found.turn == len(sentences) - 1:
        return None
    return found


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _only_instructs(text: str) -> bool:
    """Whether a turn only says how to answer ("Please answer in one word.", "Be brief"): short, no question
    mark, and opening with a word of instruction. A cloze prompt ("Ellie Kemper is a citizen of") or a
    statement is not one: it is routed as it is."""
    words = _WORD.findall(text.lower())
    return bool(words) and "?" not in text and len(words) <= 12 and words[0] in _INSTRUCTION_WORDS


_INSTRUCTION_WORDS = frozenset(
    ("please", "answer", "reply", "respond", "be", "keep", "just", "only", "use", "give", "make", "say",
     "write", "explain", "briefly", "shortly", "in", "one", "short", "and", "also", "again", "thanks")
)  # fmt: skip


def _asks(text: str) -> bool:
    """Whether a turn asks something of its own: a question mark, or a question or request word first."""
    if "?" in text:
        return True
    words = _WORD.findall(text.lower())
    return bool(words) and words[0] in _QUESTION_WORDS


def _name_runs(text: str) -> list[tuple[int, str]]:
    """``(position, name)`` of every maximal run of capitalized words or numbers, in order; a capital that
    opens a sentence does not start a name on its own ("Which", "She")."""
    runs: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    sentence_start = True
    for match in _WORD.finditer(text):
        if sentence_start and current:  # a name never runs across the end of a sentence
            runs.append((start, " ".join(current)))
            current = []
        word = re.sub(r"['’]s$", "", match.group().strip("'’.-"))
        capitalized = bool(word) and (word[0].isupper() or word[0].isdigit())
        # A capital that opens a sentence does not start a name; a common word ("The", "She") starts none.
        opener = (
            not current and (sentence_start or word.lower() in _COMMON_OPENERS) and not _is_name_like(word)
        )
        if capitalized and not opener:
            if not current:
                start = match.start()
            current.append(word)
        elif current:
            runs.append((start, " ".join(current)))
            current = []
        sentence_start = match.group().endswith((".", "!", "?", ":"))
    if current:
        runs.append((start, " ".join(current)))
    return runs


# Words that are capitalized because they open a sentence, not because they name something.
_COMMON_OPENERS = _QUESTION_WORDS | frozenset(
    [
        "i",
        "i'm",
        "i've",
        "please",
        "and",
        "but",
        "so",
        "also",
        "now",
        "then",
        "the",
        "a",
        "an",
        "this",
        "that",
        "these",
        "those",
        "my",
        "our",
        "your",
        "he",
        "she",
        "it",
        "they",
        "we",
        "you",
        "there",
        "here",
        "tell",
        "thanks",
        "thank",
        "yes",
        "no",
        "ok",
        "okay",
        "great",
        "sure",
        "hi",
        "hello",
        "hey",
    ]
)


def _is_name_like(word: str) -> bool:
    """A word that is a name wherever it stands: a digit, or a capital inside it ("LeBron", "Town17")."""
    return any(character.isdigit() for character in word) or any(c.isupper() for c in word[1:])


def _names_an_entity(question: str) -> bool:
    return bool(_name_runs(question))


def _latest_subject(text: str, store: EditStore) -> str | None:
    """The subject of a stored edit that ``text`` names last, if any."""
    subjects = {store.get(edit_id).subject for edit_id in store.ids_named_in(text)}
    subjects.discard(None)
    if not subjects:
        return None
    return max(subjects, key=lambda subject: _last_position(subject, text))


def _last_position(subject: str, text: str) -> int:
    lowered = text.lower()
    position = lowered.rfind(subject.lower())
    if position < 0 and mentions_subject(subject, text):
        return len(text)  # named in another spelling: keep it eligible
    return position


def _resolve_pronoun(question: str, entity: str) -> str:
    """``question`` with its first third-person pronoun replaced by ``entity`` (possessives by "entity's")."""
    match = _PRONOUN.search(question)
    assert match is not None  # routing_query checks for one
    pronoun = match.group().lower()
    after = question[match.end() :]
    if pronoun in _POSSESSIVES or (pronoun == "her" and re.match(r"\s+[a-z]", after)):
        replacement = f"{entity}'s"
    else:
        replacement = entity
    return question[: match.start()] + replacement + after
