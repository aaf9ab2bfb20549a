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

import functools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Edit",
    "mask_subject",
    "mentions_subject",
    "name_words",
    "named_keys",
    "normalize_text",
    "same_entity",
    "shared_name",
]

_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_TOKENS = re.compile(r"\w+|[^\w\s]")
#: Endings a subject's last word may take in a query and still name it ("Irbit" -> "Irbits", "Kemper's").
_PLURAL_ENDINGS = ("", "s", "es")


def normalize_text(text: str) -> str:
    """Lower-case, NFKC-normalize and collapse whitespace; used to detect re-edits of one prompt."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WHITESPACE.sub(" ", text).strip().rstrip("?.!:;, ")


# Subjects and queries are matched against each other many times over (a query against each candidate's
# subject, a subject against every mined candidate while training), so their folded forms are kept.
@functools.lru_cache(maxsize=1 << 16)
def _fold(text: str, casefold: bool = True) -> str:
    # Accents folded and case ignored: "Těsnohlídek" and "tesnohlidek" are one word.
    decomposed = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return folded.casefold() if casefold else folded


@functools.lru_cache(maxsize=1 << 16)
def _words(text: str, casefold: bool = True) -> tuple[str, ...]:
    return tuple(_WORD.findall(_fold(text, casefold)))


def mentions_subject(subject: str, text: str) -> bool:
    """Whether ``text`` names ``subject``: its words, in order, with case, accents and punctuation ignored.

    The subject's last word may carry a plural ending ("Houston toad" is named by "Houston toads"). Any
    other change of letters is another name: "Tovin Marsk" does not name "Tovin Marsh". A one-word subject
    must keep its capitals ("Life" the series is not named by "lost their life"): alone, a common word
    says nothing about which entity is meant.

    Example:
        >>> mentions_subject("Ellie Kemper", "Which country is ellie kemper's home?")
        True
        >>> mentions_subject("Ellie Kemper", "Which country is Ellie Kempner a citizen of?")
        False
    """
    wanted, words = _words(subject), _words(text)
    if not wanted:
        return True
    head, last = wanted[:-1], wanted[-1]
    width = len(wanted)
    cased = _words(text, casefold=False) if width == 1 else ()
    subject_cased = _fold(subject.strip(), casefold=False)
    for start in range(len(words) - width + 1):
        if words[start : start + width - 1] != head:
            continue
        word = words[start + width - 1]
        if not any(word == last + ending for ending in _PLURAL_ENDINGS):
            continue
        if width == 1 and not cased[start].startswith(subject_cased):
            continue
        return True
    return False


def name_words(text: str) -> tuple[str, ...]:
    """The words of ``text`` as subjects are matched: case and accents folded, punctuation dropped."""
    return _words(text)


def named_keys(text: str, longest: int) -> set[tuple[str, ...]]:
    """Every run of up to ``longest`` words of ``text`` that could be a subject it names (see
    :func:`mentions_subject`), in the form of :func:`name_words`; a plural ending is also tried without."""
    words = _words(text)
    keys: set[tuple[str, ...]] = set()
    for end in range(len(words)):
        last = words[end]
        endings = [last] + [
            last[: -len(e)] for e in _PLURAL_ENDINGS if e and last.endswith(e) and len(last) > len(e)
        ]
        for width in range(1, min(longest, end + 1) + 1):
            head = tuple(words[end - width + 1 : end])
            keys.update((*head, stem) for stem in endings)
    return keys


#: Lower-case words that stay inside a name between capitalized ones ("Kees van Beijnum", "Constance of
#: Toulouse", "Pedro de Mendoza").
_NAME_PARTICLES = frozenset(
    {"of", "de", "del", "della", "der", "den", "des", "di", "da", "do", "dos", "du", "van", "von", "la", "le",
     "y", "bin", "ibn", "al", "el", "zu", "ter", "ten"}
)  # fmt: skip
#: A lower-case elision or article joined to a capitalized word is part of it ("d'Arco", "al-Tikerly").
_ELIDED_PARTICLE = re.compile(r"^(?:d|l|dell|al|el)['’-](?=[A-Z])")


def _name_runs(text: str, *, particles: bool) -> list[list[tuple[int, str]]]:
    """The runs of capitalized words or numbers of ``text``, each word with its position among the text's
    words; a possessive ending is dropped and ends its run. With ``particles``, a run also goes on over
    lower-case particles followed by a capitalized word, and takes an elision joined to one ("d'Arco")."""
    runs: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    held: list[tuple[int, str]] = []  # particles after the current run, kept if a capital follows
    for index, match in enumerate(re.finditer(r"[\w'’.-]+", text)):
        word = match.group().strip("'’.-")
        core = re.sub(r"['’]s$", "", word)
        if core and (core[0].isupper() or core[0].isdigit() or (particles and _ELIDED_PARTICLE.match(core))):
            current += held + [(index, core)]
            held = []
            if core != word:  # a possessive ends the name
                runs.append(current)
                current = []
        elif particles and current and core in _NAME_PARTICLES:
            held.append((index, core))
        else:
            if current:
                runs.append(current)
            current, held = [], []
    if current:
        runs.append(current)
    return runs


def shared_name(edit_text: str, query: str) -> str | None:
    """The longest name (a run of capitalized words or numbers) of ``edit_text`` that ``query`` names too.

    For an edit that states no subject, the entity both texts name stands in for it. A capitalized first
    word alone ("What", "The") is no name. A run goes on over lower-case particles between capitalized words
    ("Kees van Beijnum", "Constance of Toulouse") and over an elision joined to one ("Giovanna d'Arco"); a
    possessive ends it ("Pedro García Barros's" is "Pedro García Barros").

    Example:
        >>> shared_name("What is the country of citizenship of Ellie Kemper?", "Is Ellie Kemper Croatian?")
        'Ellie Kemper'
        >>> shared_name("What nationality was Kees van Beijnum?", "Which country was Kees van Beijnum from?")
        'Kees van Beijnum'
    """
    candidates = []
    for run in _name_runs(edit_text, particles=True):
        if len(run) == 1 and run[0][0] == 0:
            continue
        names = [
            " ".join(core for _, core in run[i:j])
            for i in range(len(run))
            for j in range(i + 1, len(run) + 1)
            if run[i][1] not in _NAME_PARTICLES and run[j - 1][1] not in _NAME_PARTICLES
        ]
        candidates += [name for name in names if not (name == run[0][1] and run[0][0] == 0)]
    named = [name for name in candidates if mentions_subject(name, query)]
    return max(named, key=lambda name: (len(name.split()), len(name))) if named else None


def entity_names(text: str) -> list[str]:
    """The names ``text`` holds: maximal runs of capitalized words or numbers.

    A run that opens the text loses its first word: a capital there is the sentence's, not a name's
    ("Who", "The"; "Ellie Kemper is ..." gives "Kemper", which still names her in :func:`mentions_subject`).
    A possessive ending is dropped ("Kemper's" is "Kemper").

    Example:
        >>> entity_names("Who is the mayor of Town17?")
        ['Town17']
        >>> entity_names("What is the country of citizenship of Ellie Kemper's son?")
        ['Ellie Kemper']
    """
    names = []
    for run in _name_runs(text, particles=False):
        if run[0][0] == 0:
            run = run[1:]
        if run:
            names.append(" ".join(core for _, core in run))
    return names


def same_entity(first: Edit, second: Edit) -> str | None:
    """The name of the entity two edits are both about, or ``None`` when they are not surely about one.

    Edits with subjects are about one entity when the subjects are the same words (case and accents
    ignored). An edit without a subject is about the names its prompt or statement holds
    (:func:`entity_names`); it is about the same entity as another edit when each names every name of the
    other. Conservative on purpose: two edits that are not surely about one entity never supersede each other.

    Example:
        >>> same_entity(Edit(prompt="Who is the mayor of Town1?", target="A"),
        ...             Edit(prompt="Which person is the mayor of Town1?", target="B"))
        'Town1'
        >>> same_entity(Edit(prompt="Who is the mayor of Town1?", target="A"),
        ...             Edit(prompt="Who is the mayor of Town2?", target="B")) is None
        True
    """
    if first.subject is not None and second.subject is not None:
        return first.subject if name_words(first.subject) == name_words(second.subject) else None
    first_names = [first.subject] if first.subject is not None else entity_names(first.query)
    second_names = [second.subject] if second.subject is not None else entity_names(second.query)
    if not first_names or not second_names:
        return None
    if not all(mentions_subject(name, second.query) for name in first_names):
        return None
    if not all(mentions_subject(name, first.query) for name in second_names):
        return None
    return max(first_names + second_names, key=lambda name: (len(name.split()), len(name)))


def mask_subject(subject: str, text: str, placeholder: str = "X") -> str:
    """``text`` with every mention of ``subject`` (as :func:`mentions_subject` finds them) replaced.

    The text comes back as the scope classifier's uncased tokenizer reads it: words lower-cased and
    punctuation kept as tokens of their own, joined by single spaces. Punctuation inside a mention
    ("George R. R. Martin") goes with it.

    Example:
        >>> mask_subject("Ellie Kemper", "Which country is Ellie Kemper's home?")
        "which country is X ' s home ?"
        >>> mask_subject("George R. R. Martin", "What language does George R. R. Martin speak?")
        'what language does X speak ?'
    """
    wanted = _words(subject)
    tokens = _TOKENS.findall(_fold(text))
    if not wanted:
        return " ".join(tokens)
    # Positions of the word tokens; a mention is a run of consecutive words, whatever punctuation is between.
    positions = [i for i, token in enumerate(tokens) if _WORD.fullmatch(token)]
    words = tuple(tokens[i] for i in positions)
    head, last, width = wanted[:-1], wanted[-1], len(wanted)
    spans = []
    start = 0
    while start <= len(words) - width:
        window = words[start : start + width]
        if window[:-1] == head and any(window[-1] == last + ending for ending in _PLURAL_ENDINGS):
            spans.append((positions[start], positions[start + width - 1]))
            start += width
        else:
            start += 1
    out, index = [], 0
    for first, final in spans:
        out += tokens[index:first]
        out.append(placeholder)
        index = final + 1
    out += tokens[index:]
    return " ".join(out)


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
        subject: the entity the edit is about; required when ``prompt`` has a ``{}`` placeholder, optional
            otherwise, and then named in the prompt or statement.
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
            if subject is not None and not mentions_subject(subject, statement):
                raise ValueError(f"Edit.subject {subject!r} is not named in statement {statement!r}")
        else:
            if prompt is None or target is None:
                raise ValueError("an Edit needs a prompt and a target (or a statement: Edit.from_statement)")
            placeholders = prompt.count("{}")
            if placeholders > 1:
                raise ValueError(f"Edit.prompt may hold at most one '{{}}' placeholder: {prompt!r}")
            if placeholders == 1 and subject is None:
                raise ValueError(f"Edit.prompt {prompt!r} has a '{{}}' placeholder but no subject was given")
            if placeholders == 0 and subject is not None:
                if subject not in prompt:
                    raise ValueError(f"Edit.subject {subject!r} does not occur in prompt {prompt!r}")
                if not re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", prompt):
                    # "Bob" in "Bobcat" is part of another word: the edit would be about an entity the
                    # prompt does not name, and the scope classifier would match it to queries about Bob.
                    raise ValueError(
                        f"Edit.subject {subject!r} occurs in prompt {prompt!r} only inside another word; a "
                        "subject must be named there as whole words"
                    )
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
    def from_statement(cls, statement: str, *, subject: str | None = None) -> Edit:
        """An edit stated as one free-text sentence, optionally naming the entity it is about.

        With a ``subject``, the scope classifier considers the edit only for queries that name it, as it
        does for prompt edits (see :attr:`serac.scope.ScopeClassifierConfig.subject_match`).
        """
        return cls(statement=statement, subject=subject)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Edit:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``KeyError``, anything but a mapping a ``TypeError``."""
        if not isinstance(data, Mapping):
            raise TypeError(
                f"Edit.from_dict takes a mapping of fields (prompt, target, subject, statement), got "
                f"{type(data).__name__}: {data!r:.80}"
            )
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
