"""The one internal schema every edit dataset is converted into.

An :class:`EditExample` is an edit together with the queries that tell whether it was applied well:

* **in-scope queries** (:class:`InScopeQuery`): must now get the edit's answer (paraphrases, question and
  cloze forms, yes/no questions about the edit);
* **out-of-scope queries** (:class:`OutOfScopeQuery`): must keep the base model's answer. Their ``kind``
  says how hard they are to tell apart from the edit: same subject with another relation, same relation
  with another subject, a near-duplicate name, another hop of the same multi-hop chain, a nearest
  neighbour in embedding space, or plainly unrelated;
* **portability questions** (:class:`PortabilityQuestion`): multi-hop questions whose answer changes
  because of the edit, where the dataset has them.

Loaders (:mod:`serac.data.loaders`) and the synthetic generator (:mod:`serac.data.synthetic`) produce
these objects; :mod:`serac.data.pairs` turns them into ``datasets.Dataset`` tables for training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from serac.edits import Edit, mentions_subject, normalize_text

__all__ = [
    "EditExample",
    "HARD_OUT_OF_SCOPE_KINDS",
    "IN_SCOPE_KINDS",
    "InScopeQuery",
    "OUT_OF_SCOPE_KINDS",
    "OutOfScopeQuery",
    "PortabilityQuestion",
]

#: Kinds of in-scope query. ``edit`` is the edit's own prompt; ``question``/``cloze`` are other templated
#: phrasings; ``paraphrase`` is a dataset's free rephrasing; ``yes_no`` asks whether the edit holds
#: ("Is X a citizen of Croatia?" -> "yes"); ``generation`` is an open prompt that should mention the
#: new answer (CounterFact's generation prompts) and has no exact answer to check.
IN_SCOPE_KINDS: tuple[str, ...] = ("edit", "question", "cloze", "paraphrase", "yes_no", "generation")

#: Kinds of out-of-scope query, hardest-looking first. All but ``unrelated`` are *hard* negatives: they
#: share words, an entity or a relation with the edit, so only a scope classifier that reads both texts
#: closely rejects them.
OUT_OF_SCOPE_KINDS: tuple[str, ...] = (
    "near_duplicate_name",
    "same_subject_other_relation",
    "same_relation_other_subject",
    "other_hop",
    "embedding_neighbor",
    "unrelated",
)
HARD_OUT_OF_SCOPE_KINDS: frozenset[str] = frozenset(OUT_OF_SCOPE_KINDS) - {"unrelated"}


def _text(owner: str, name: str, value: Any, *, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{owner}.{name} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise ValueError(f"{owner}.{name} must not be empty")
    return value


def _aliases(owner: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{owner}.aliases must be a sequence of strings, got {type(value).__name__}")
    aliases: list[str] = []
    for alias in value:
        alias = _text(owner, "aliases[]", alias)
        if alias not in aliases:
            aliases.append(alias)
    return tuple(aliases)


@dataclass(frozen=True)
class InScopeQuery:
    """A query the edit covers, with the answer it must now get.

    Args:
        text: the query (question, cloze prefix, or open prompt).
        answer: the answer after the edit.
        aliases: other acceptable spellings of ``answer``.
        kind: one of :data:`IN_SCOPE_KINDS`.
    """

    text: str
    answer: str
    aliases: tuple[str, ...] = ()
    kind: str = "paraphrase"

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", _text("InScopeQuery", "text", self.text))
        object.__setattr__(self, "answer", _text("InScopeQuery", "answer", self.answer))
        object.__setattr__(self, "aliases", _aliases("InScopeQuery", self.aliases))
        if self.kind not in IN_SCOPE_KINDS:
            raise ValueError(f"InScopeQuery.kind must be one of {IN_SCOPE_KINDS}, got {self.kind!r}")

    @property
    def answers(self) -> tuple[str, ...]:
        """The answer followed by its aliases."""
        return (self.answer, *(alias for alias in self.aliases if alias != self.answer))


@dataclass(frozen=True)
class OutOfScopeQuery:
    """A query the edit must not change.

    Args:
        text: the query.
        kind: one of :data:`OUT_OF_SCOPE_KINDS`.
        answer: its answer without the edit, where the dataset knows it (``None`` otherwise).
        aliases: other acceptable spellings of ``answer``.
    """

    text: str
    kind: str = "unrelated"
    answer: str | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", _text("OutOfScopeQuery", "text", self.text))
        object.__setattr__(self, "answer", _text("OutOfScopeQuery", "answer", self.answer, allow_none=True))
        object.__setattr__(self, "aliases", _aliases("OutOfScopeQuery", self.aliases))
        if self.kind not in OUT_OF_SCOPE_KINDS:
            raise ValueError(f"OutOfScopeQuery.kind must be one of {OUT_OF_SCOPE_KINDS}, got {self.kind!r}")

    @property
    def is_hard(self) -> bool:
        """Whether the query shares an entity, a relation or close wording with the edit."""
        return self.kind in HARD_OUT_OF_SCOPE_KINDS


@dataclass(frozen=True)
class PortabilityQuestion:
    """A multi-hop question whose answer changes because of the edit (and its companion edits).

    Args:
        text: the question.
        answer: its answer after the edit.
        aliases: other acceptable spellings of ``answer``.
    """

    text: str
    answer: str
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", _text("PortabilityQuestion", "text", self.text))
        object.__setattr__(self, "answer", _text("PortabilityQuestion", "answer", self.answer))
        object.__setattr__(self, "aliases", _aliases("PortabilityQuestion", self.aliases))

    @property
    def answers(self) -> tuple[str, ...]:
        """The answer followed by its aliases."""
        return (self.answer, *(alias for alias in self.aliases if alias != self.answer))


def _tuple_of(owner: str, name: str, value: Any, item_type: type) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{owner}.{name} must be a sequence of {item_type.__name__}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, item_type):
            raise TypeError(
                f"{owner}.{name} must hold {item_type.__name__} objects, got {type(item).__name__}"
            )
    return items


@dataclass(frozen=True)
class EditExample:
    """An edit with its in-scope, out-of-scope and portability queries.

    Args:
        edit: the edit.
        in_scope: queries that must now get the edit's answer.
        out_of_scope: queries whose answers must not change.
        portability: multi-hop questions that need the edit (and ``companion_edits``) to be answered.
        statement: the edit stated as one sentence, where known (see :meth:`as_statement_edit`).
        companion_edits: other edits of the same dataset case; the portability questions need them too.
        source: where the example comes from ("synthetic", "mquake", "zsre", "counterfact", ...).
        case_id: the dataset's id of the case, as a string.
        relation: the relation edited (a Wikidata property id or a synthetic relation name), if known.
        true_answer: the answer before the edit, if known.

    Example:
        >>> from serac.edits import Edit
        >>> example = EditExample(
        ...     edit=Edit(prompt="{} is a citizen of", subject="Marel Dovtan", target="Croatia"),
        ...     in_scope=(InScopeQuery("Which country is Marel Dovtan a citizen of?", "Croatia"),),
        ...     out_of_scope=(OutOfScopeQuery("Which sport does Marel Dovtan play?", "same_subject_other_relation"),),
        ...     statement="Marel Dovtan is a citizen of Croatia.",
        ... )
        >>> example.as_statement_edit().edit.text
        'Marel Dovtan is a citizen of Croatia.'
    """

    edit: Edit
    in_scope: tuple[InScopeQuery, ...] = ()
    out_of_scope: tuple[OutOfScopeQuery, ...] = ()
    portability: tuple[PortabilityQuestion, ...] = ()
    statement: str | None = None
    companion_edits: tuple[Edit, ...] = ()
    source: str = "custom"
    case_id: str | None = None
    relation: str | None = None
    true_answer: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.edit, Edit):
            raise TypeError(f"EditExample.edit must be an Edit, got {type(self.edit).__name__}")
        object.__setattr__(
            self, "in_scope", _tuple_of("EditExample", "in_scope", self.in_scope, InScopeQuery)
        )
        object.__setattr__(
            self, "out_of_scope", _tuple_of("EditExample", "out_of_scope", self.out_of_scope, OutOfScopeQuery)
        )
        object.__setattr__(
            self,
            "portability",
            _tuple_of("EditExample", "portability", self.portability, PortabilityQuestion),
        )
        object.__setattr__(
            self, "companion_edits", _tuple_of("EditExample", "companion_edits", self.companion_edits, Edit)
        )
        for name in ("statement", "case_id", "relation", "true_answer"):
            object.__setattr__(self, name, _text("EditExample", name, getattr(self, name), allow_none=True))
        object.__setattr__(self, "source", _text("EditExample", "source", self.source))
        # An out-of-scope query that is textually one of the in-scope queries would teach the scope
        # classifier a contradiction; catching it here protects every loader and user-built example.
        in_scope_keys = {normalize_text(query.text) for query in self.in_scope}
        clash = [query.text for query in self.out_of_scope if normalize_text(query.text) in in_scope_keys]
        if clash:
            raise ValueError(f"queries listed both in scope and out of scope: {clash[:3]}")

    @property
    def answer(self) -> str | None:
        """The edit's new answer (``None`` for a statement edit, whose answer is implicit)."""
        return self.edit.target

    @property
    def hard_out_of_scope(self) -> tuple[OutOfScopeQuery, ...]:
        """The out-of-scope queries that share an entity, a relation or close wording with the edit."""
        return tuple(query for query in self.out_of_scope if query.is_hard)

    @property
    def easy_out_of_scope(self) -> tuple[OutOfScopeQuery, ...]:
        """The unrelated out-of-scope queries."""
        return tuple(query for query in self.out_of_scope if not query.is_hard)

    def with_queries(
        self,
        *,
        in_scope: Sequence[InScopeQuery] = (),
        out_of_scope: Sequence[OutOfScopeQuery] = (),
    ) -> EditExample:
        """A copy with more queries; queries already present (same normalized text) are skipped."""
        seen = {normalize_text(query.text) for query in (*self.in_scope, *self.out_of_scope)}
        new_in, new_out = list(self.in_scope), list(self.out_of_scope)
        for query in in_scope:
            if normalize_text(query.text) not in seen:
                seen.add(normalize_text(query.text))
                new_in.append(query)
        for query in out_of_scope:
            if normalize_text(query.text) not in seen:
                seen.add(normalize_text(query.text))
                new_out.append(query)
        return replace(self, in_scope=tuple(new_in), out_of_scope=tuple(new_out))

    def as_statement_edit(self) -> EditExample:
        """The same example with the edit given as its one-sentence statement.

        The prompt edit's own query becomes an in-scope query of kind ``edit``, so nothing is lost.
        Raises ``ValueError`` when the example has no statement.
        """
        if self.edit.is_statement:
            return self
        if self.statement is None:
            raise ValueError(f"example {self.case_id!r} has no statement form")
        own_query = InScopeQuery(self.edit.query, self.edit.target, kind="edit")  # type: ignore[arg-type]
        queries = list(self.in_scope)
        if all(normalize_text(query.text) != self.edit.key for query in queries):
            queries.insert(0, own_query)
        subject = self.edit.subject
        if subject is not None and not mentions_subject(subject, self.statement):
            subject = None  # a statement in other words ("the UK" for "United Kingdom") names no subject
        statement_edit = Edit.from_statement(self.statement, subject=subject)
        return replace(self, edit=statement_edit, in_scope=tuple(queries))

    def as_question_edit(self) -> EditExample:
        """The same example with the edit given as its own question and no subject, as people often write a
        correction ("What is the country of citizenship of Ellie Kemper?" -> "Croatia").

        The scope classifier then has no subject to match queries by; the names in the question stand in.
        Raises ``ValueError`` for a statement edit (it has no question).
        """
        if self.edit.is_statement:
            raise ValueError(f"example {self.case_id!r} has a statement edit, not a question")
        return replace(self, edit=Edit(prompt=self.edit.query, target=self.edit.target))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (inverse: :meth:`from_dict`)."""
        return {
            "edit": self.edit.to_dict(),
            "in_scope": [
                {"text": q.text, "answer": q.answer, "aliases": list(q.aliases), "kind": q.kind}
                for q in self.in_scope
            ],
            "out_of_scope": [
                {"text": q.text, "kind": q.kind, "answer": q.answer, "aliases": list(q.aliases)}
                for q in self.out_of_scope
            ],
            "portability": [
                {"text": q.text, "answer": q.answer, "aliases": list(q.aliases)} for q in self.portability
            ],
            "statement": self.statement,
            "companion_edits": [edit.to_dict() for edit in self.companion_edits],
            "source": self.source,
            "case_id": self.case_id,
            "relation": self.relation,
            "true_answer": self.true_answer,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EditExample:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``KeyError``."""
        known = {
            "edit", "in_scope", "out_of_scope", "portability", "statement", "companion_edits",
            "source", "case_id", "relation", "true_answer",
        }  # fmt: skip
        unknown = set(data) - known
        if unknown:
            raise KeyError(f"unknown EditExample fields: {sorted(unknown)}")
        if "edit" not in data:
            raise KeyError("EditExample data needs an 'edit'")
        return cls(
            edit=Edit.from_dict(data["edit"]),
            in_scope=tuple(
                InScopeQuery(
                    q["text"], q["answer"], tuple(q.get("aliases") or ()), q.get("kind", "paraphrase")
                )
                for q in data.get("in_scope") or ()
            ),
            out_of_scope=tuple(
                OutOfScopeQuery(
                    q["text"], q.get("kind", "unrelated"), q.get("answer"), tuple(q.get("aliases") or ())
                )
                for q in data.get("out_of_scope") or ()
            ),
            portability=tuple(
                PortabilityQuestion(q["text"], q["answer"], tuple(q.get("aliases") or ()))
                for q in data.get("portability") or ()
            ),
            statement=data.get("statement"),
            companion_edits=tuple(Edit.from_dict(edit) for edit in data.get("companion_edits") or ()),
            source=data.get("source") or "custom",
            case_id=None if data.get("case_id") is None else str(data["case_id"]),
            relation=data.get("relation"),
            true_answer=data.get("true_answer"),
        )
