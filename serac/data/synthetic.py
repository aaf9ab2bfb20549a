"""A built-in, deterministic generator of synthetic edit data (no download).

It invents a small world of entities (people, companies, cities, countries, books, films, bands,
universities) whose names are composed from syllables, so they are novel to any pretrained model, and
gives every (entity, relation) pair an answer. Each generated :class:`~serac.data.schema.EditExample`
changes one such answer and lists:

* in-scope queries: the other question and cloze phrasings of the edited relation (at least four of
  each per relation), and yes/no questions about the edit ("Is X a citizen of Croatia?" -> "yes",
  the previous answer -> "no");
* out-of-scope queries of every hard kind: the same subject with another relation, the same relation
  with another subject, a near-duplicate name (one letter or one token changed) with the same relation,
  and unrelated queries;
* a statement form of the edit, sometimes behind a short lead-in ("According to the latest records, ...").

No fact is both edited by one example and asked as an out-of-scope query of another, so all generated
edits can be applied at once without changing any listed out-of-scope answer.

What it cannot teach (use real data such as MQuAKE, zsRE or CounterFact for these):

* real-world knowledge about real entities: subjects are invented, so nothing here says what a base
  model knows, and answers of out-of-scope queries are answers in the invented world only;
* free-form language beyond the templates: paraphrases are the templates' phrasings, statements are
  template sentences, not news paragraphs;
* multi-hop composition: no example asks a question that needs the edit *and* another fact; there are
  no portability questions;
* relations outside :data:`~serac.data.relations.RELATIONS`, one-to-many relations, temporal qualifiers,
  and edits that contradict each other.

Example:
    >>> examples = generate_synthetic_examples(3, seed=0)
    >>> len(examples), examples[0].source
    (3, 'synthetic')
    >>> [e.edit for e in generate_synthetic_examples(3, seed=0)] == [e.edit for e in examples]
    True
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from serac.data.relations import RELATIONS, Relation
from serac.data.schema import EditExample, InScopeQuery, OutOfScopeQuery
from serac.edits import Edit, mentions_subject, normalize_text

logger = logging.getLogger(__name__)

__all__ = ["SyntheticDataConfig", "generate_synthetic_examples"]


# Value pools of the object types that are not entities of the invented world.
_VALUES: dict[str, tuple[str, ...]] = {
    "country": ("Croatia", "Norway", "Brazil", "Japan", "Kenya", "Canada", "Portugal", "Vietnam", "Chile", "Egypt",
                "Finland", "Ireland", "Mexico", "Poland", "Morocco", "Peru", "Sweden", "Thailand", "Greece", "Ghana",
                "Austria", "Argentina", "Indonesia", "Iceland", "Hungary", "Turkey", "Nigeria", "Spain", "Denmark",
                "Colombia", "India", "Germany", "Italy", "France", "Australia", "South Korea", "Uruguay", "Estonia"),
    "sport": ("football", "basketball", "tennis", "cricket", "ice hockey", "baseball", "rugby", "volleyball", "golf",
              "handball", "water polo", "badminton", "table tennis", "fencing", "rowing", "curling", "lacrosse"),
    "language": ("French", "Spanish", "German", "Japanese", "Portuguese", "Swahili", "Finnish", "Polish", "Turkish",
                 "Greek", "Korean", "Dutch", "Hungarian", "Italian", "Russian", "Arabic", "Hindi", "Icelandic",
                 "Czech", "Danish", "Tagalog", "Croatian", "Norwegian", "Vietnamese"),
    "instrument": ("piano", "violin", "guitar", "cello", "trumpet", "flute", "saxophone", "drums", "harp", "clarinet",
                   "accordion", "oboe", "banjo", "organ", "double bass", "trombone", "mandolin", "viola"),
    "occupation": ("architect", "surgeon", "journalist", "chemist", "painter", "pilot", "lawyer", "diplomat",
                   "novelist", "economist", "photographer", "astronomer", "carpenter", "chef", "veterinarian",
                   "engineer", "librarian", "pharmacist", "geologist", "translator"),
    "religion": ("Buddhism", "Christianity", "Islam", "Judaism", "Hinduism", "Sikhism", "Shinto", "Jainism",
                 "Taoism", "Zoroastrianism", "Confucianism"),
    "music_genre": ("jazz", "blues", "hip hop", "heavy metal", "reggae", "country music", "techno", "opera",
                    "punk rock", "folk music", "soul", "funk", "bossa nova", "gospel", "flamenco", "ska", "synth-pop"),
    "field": ("mathematics", "linguistics", "botany", "geology", "philosophy", "medicine", "economics", "astronomy",
              "sociology", "robotics", "chemistry", "archaeology", "neuroscience", "oceanography", "statistics"),
    "industry": ("automotive manufacturing", "pharmaceuticals", "banking", "aerospace", "telecommunications",
                 "retail", "mining", "shipping", "software", "agriculture", "insurance", "renewable energy",
                 "video games", "textiles", "food processing"),
    "currency": ("euro", "yen", "peso", "krona", "rupee", "dinar", "franc", "rand", "zloty", "won", "real", "lira",
                 "shilling", "dollar", "kuna", "baht", "forint"),
    "continent": ("Africa", "Asia", "Europe", "North America", "South America", "Oceania"),
    "literary_genre": ("science fiction", "mystery", "romance", "horror", "fantasy", "historical fiction", "satire",
                       "poetry", "crime fiction", "biography", "travel writing", "philosophy"),
}  # fmt: skip

_REAL_CITIES = ("Lyon", "Osaka", "Porto", "Bergen", "Cusco", "Tampere", "Krakow", "Izmir", "Mombasa", "Perth",
                "Valencia", "Leipzig", "Bologna", "Gothenburg", "Medellin", "Busan", "Marrakesh", "Tartu")  # fmt: skip

# Syllables for invented names: consonant-vowel pieces give pronounceable, novel names.
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v", "z",
           "h", "j", "sh", "th", "ch", "pl")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou", "ia")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "k", "nd", "st")
_LAST_SUFFIXES = ("", "", "", "son", "ski", "ova", "ez", "ini", "berg", "ley", "ard", "ovic", "sen", "ton")
_CITY_SUFFIXES = (
    "",
    "burg",
    "ville",
    "ford",
    "stad",
    "holm",
    "ora",
    "dale",
    "port",
    "mouth",
    "grad",
    "polis",
)
_COUNTRY_SUFFIXES = ("ia", "land", "stan", "ora", "ica", "avia", "onia", "esh")
_COMPANY_SUFFIXES = ("Systems", "Industries", "Foods", "Motors", "Labs", "Group", "Media", "Holdings", "Pharma",
                     "Logistics", "Works", "Dynamics", "Records", "Press", "Textiles", "Energy")  # fmt: skip
_ADJECTIVES = ("Silent", "Crimson", "Hollow", "Last", "Broken", "Golden", "Distant", "Hidden", "Quiet", "Burning",
               "Frozen", "Wandering", "Paper", "Iron", "Velvet", "Hungry", "Seventh", "Northern", "Glass", "Wild")  # fmt: skip
_NOUNS = ("Harbor", "Lantern", "Orchard", "River", "Kingdom", "Mirror", "Garden", "Voyage", "Winter", "Signal",
          "Tower", "Meadow", "Compass", "Archive", "Island", "Crown", "Shadow", "Engine", "Letter", "Forest")  # fmt: skip
_BAND_NOUNS = ("Wolves", "Lanterns", "Comets", "Ravens", "Engines", "Tigers", "Satellites", "Owls", "Pilots", "Echoes",
               "Foxes", "Arrows", "Monarchs", "Drifters", "Sparrows")  # fmt: skip

#: Words that make a longer name of another entity when put before a name ("North Korea", "New York", "street
#: football"): the subject is named, word for word, by a query about something else.
_NAME_MODIFIERS = ("North", "South", "East", "West", "New", "Old", "Greater", "Upper", "Lower", "Little", "Great",
                   "Royal", "Central", "Northern", "Southern", "American", "British", "International", "National",
                   "Saint", "Fort", "Port", "Young", "street", "beach", "indoor", "youth", "amateur", "modern",
                   "classical")  # fmt: skip

#: Lead-ins that make statement-style edits less template-like.
_PICK_TRIES = 20

_STATEMENT_LEADS = ("", "", "", "According to the latest records, ", "As of this year, ", "Update: ", "It is now the case that ",
                    "New information: ", "Recent reports confirm that ", "Note that ")  # fmt: skip

_FIXED_WORDS = frozenset({"the", "a", "of", "for", "and", "to", "return", "university", "institute", "technology",
                          "state"})  # fmt: skip
_WORD_LISTS = (_ADJECTIVES, _NOUNS, _BAND_NOUNS, _COMPANY_SUFFIXES)

ENTITY_TYPES: tuple[str, ...] = ("person", "company", "city", "country", "book", "film", "band", "university")


@dataclass
class SyntheticDataConfig:
    """Settings of :func:`generate_synthetic_examples`.

    Args:
        question_fraction: share of edits given as a question (the rest: cloze or statement).
        statement_fraction: share of edits given as a statement sentence instead of a prompt with a target.
        in_scope_phrasings: templated in-scope phrasings per edit (question and cloze forms of the relation).
        yes_no_questions: add yes/no questions ("yes" for the new answer, "no" for the previous one).
        indirect_phrasings: in-scope open prompts per edit whose continuation follows from the fact without
            asking it (:attr:`~serac.data.relations.Relation.indirect`, kind ``"generation"``); drawn from a
            random stream of their own, so the other queries are the same with or without them.
        same_subject_other_relation: out-of-scope queries per edit about the same subject and another relation.
        same_relation_other_subject: out-of-scope queries per edit about another subject and the same relation.
        near_duplicate_name: out-of-scope queries per edit about a near-duplicate of the subject's name.
        modified_names: more of those per edit, each about a longer name that puts a word before the subject's
            ("North X", "street X": another entity that a query names with the subject's own words); drawn
            from a random stream of their own, so the other queries are the same with or without them.
        unrelated: unrelated out-of-scope queries per edit.
        relations: names of the relations to use (default: all of :data:`RELATIONS`).
    """

    question_fraction: float = field(default=0.4, metadata={"help": "share of question-form edits"})
    statement_fraction: float = field(default=0.2, metadata={"help": "share of statement-form edits"})
    in_scope_phrasings: int = field(default=6, metadata={"help": "templated in-scope queries per edit"})
    yes_no_questions: bool = field(default=True, metadata={"help": "add yes/no in-scope questions"})
    indirect_phrasings: int = field(default=0, metadata={"help": "in-scope open prompts per edit"})
    same_subject_other_relation: int = field(default=2, metadata={"help": "hard negatives: same subject"})
    same_relation_other_subject: int = field(default=2, metadata={"help": "hard negatives: same relation"})
    near_duplicate_name: int = field(default=2, metadata={"help": "hard negatives: near-duplicate name"})
    modified_names: int = field(default=0, metadata={"help": "hard negatives: a word before the name"})
    unrelated: int = field(default=2, metadata={"help": "easy negatives"})
    relations: tuple[str, ...] | None = field(default=None, metadata={"help": "relation names to use"})

    def __post_init__(self) -> None:
        for name in ("question_fraction", "statement_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.question_fraction + self.statement_fraction > 1.0:
            raise ValueError("question_fraction + statement_fraction must not exceed 1")
        for name in ("in_scope_phrasings", "indirect_phrasings", "same_subject_other_relation",
                     "same_relation_other_subject", "near_duplicate_name", "modified_names", "unrelated"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.relations is not None:
            known = {relation.name for relation in RELATIONS}
            unknown = [name for name in self.relations if name not in known]
            if unknown or not self.relations:
                raise ValueError(f"unknown relations {unknown}; known: {sorted(known)}")
            self.relations = tuple(self.relations)


class _World:
    """Invented entities and the answer of every (entity, relation) pair, all drawn from one seeded RNG."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.entities: dict[str, list[str]] = {kind: [] for kind in ENTITY_TYPES}
        self.taken: set[str] = set()
        self.facts: dict[tuple[str, str], str] = {}
        # (subject, relation) pairs that are edited, and pairs that are edited or asked as out-of-scope
        # queries: an edit never lands on a pair another example relies on being unchanged.
        self.edited: set[tuple[str, str]] = set()
        self.used: set[tuple[str, str]] = set()
        # Keep a few ready entities of each type so object draws have something to choose from.
        for kind in ENTITY_TYPES:
            for _ in range(8):
                self.new_entity(kind)

    # -- names
    def _word(self, syllables: int) -> str:
        rng = self.rng
        parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
        return ("".join(parts) + rng.choice(_CODAS)).capitalize()

    def _raw_name(self, kind: str) -> str:
        rng = self.rng
        if kind == "person":
            return f"{self._word(2)} {self._word(rng.choice((2, 2, 3)))}{rng.choice(_LAST_SUFFIXES)}"
        if kind == "city":
            return self._word(rng.choice((2, 3))) + rng.choice(_CITY_SUFFIXES)
        if kind == "country":
            return self._word(2).rstrip("aeiou") + rng.choice(_COUNTRY_SUFFIXES)
        if kind == "company":
            return f"{self._word(2)} {rng.choice(_COMPANY_SUFFIXES)}"
        if kind == "book":
            pattern = rng.randrange(3)
            if pattern == 0:
                return f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} of {self._word(2)}"
            if pattern == 1:
                return f"{rng.choice(_NOUNS)}s of {self._word(3)}"
            return f"A {rng.choice(_NOUNS)} for {self._word(2)}"
        if kind == "film":
            pattern = rng.randrange(3)
            if pattern == 0:
                return f"Return to {self._word(2)}{rng.choice(_CITY_SUFFIXES)}"
            if pattern == 1:
                return f"The {rng.choice(_ADJECTIVES)} {self._word(2)}"
            return f"{self._word(2)}: {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        if kind == "band":
            if rng.random() < 0.5:
                return f"The {rng.choice(_ADJECTIVES)} {rng.choice(_BAND_NOUNS)}"
            return f"{self._word(2)} and the {rng.choice(_BAND_NOUNS)}"
        if kind == "university":
            pattern = rng.randrange(3)
            if pattern == 0:
                return f"University of {self._word(2)}{rng.choice(_CITY_SUFFIXES)}"
            if pattern == 1:
                return f"{self._word(2)} Institute of Technology"
            return f"{self._word(3)} State University"
        raise ValueError(f"unknown entity type {kind!r}")

    def new_entity(self, kind: str) -> str:
        while True:
            name = self._raw_name(kind)
            if normalize_text(name) not in self.taken:
                self.taken.add(normalize_text(name))
                self.entities[kind].append(name)
                return name

    def near_duplicate(self, name: str) -> str:
        """A name one letter or one token away from ``name``, or ``name`` inside a longer name; no entity."""
        rng = self.rng
        tokens = name.split(" ")
        # Template words ("University", "of", "Return") stay; changing them would not look like a typo.
        editable = [
            i for i, token in enumerate(tokens) if token.lower() not in _FIXED_WORDS and len(token) > 2
        ]
        for _ in range(100):
            position = rng.choice(editable)
            token = tokens[position]
            if rng.random() < 0.35:
                # A longer name that contains this one ("Gran Turismo 6", "Gaelic football"): another entity.
                extra = str(rng.randint(2, 9)) if rng.random() < 0.5 else self._word(2)
                candidate = f"{name} {extra}" if rng.random() < 0.5 else f"{extra} {name}"
                key = normalize_text(candidate)
                if key not in self.taken:
                    self.taken.add(key)
                    return candidate
                continue
            if len(tokens) > 1 and rng.random() < 0.4:
                # One token replaced: another first name, another noun of the same list, ...
                word_list = next((words for words in _WORD_LISTS if token in words), None)
                replacement = rng.choice(word_list) if word_list else self._word(2)
            else:
                letters = [i for i, ch in enumerate(token) if ch.isalpha() and i > 0]
                letter = rng.choice(letters)
                old = token[letter]
                pool = "aeiou" if old.lower() in "aeiou" else "bdfgklmnprstvz"
                replacement = (
                    token[:letter]
                    + rng.choice([ch for ch in pool if ch != old.lower()])
                    + token[letter + 1 :]
                )
            candidate = " ".join((*tokens[:position], replacement, *tokens[position + 1 :]))
            key = normalize_text(candidate)
            if key not in self.taken:
                self.taken.add(key)
                return candidate
        raise RuntimeError(f"could not make a near-duplicate of {name!r}")  # pragma: no cover

    # -- facts
    def pick(self, kind: str, accept: Callable[[str], bool]) -> str | None:
        """A random existing entity of ``kind`` that ``accept`` takes, or ``None`` after a few tries.

        Rejection sampling instead of filtering the whole list keeps generation linear in the number of
        examples; when most entities are taken, the caller invents a new one instead.
        """
        pool = self.entities[kind]
        for _ in range(_PICK_TRIES):
            candidate = self.rng.choice(pool)
            if accept(candidate):
                return candidate
        return None

    def draw_object(self, object_type: str, exclude: Sequence[str] = ()) -> str:
        rng = self.rng
        if object_type in _VALUES:
            choices = [value for value in _VALUES[object_type] if value not in exclude]
            return rng.choice(choices or _VALUES[object_type])
        if object_type == "city" and rng.random() < 0.3:
            # Mix real and invented city names so the counterfactual model copies either kind.
            choices = [value for value in _REAL_CITIES if value not in exclude]
            if choices:
                return rng.choice(choices)
        if object_type != "city" and rng.random() < 0.3:
            return self.new_entity(object_type)
        return self.pick(object_type, lambda value: value not in exclude) or self.new_entity(object_type)

    def fact(self, subject: str, relation: Relation) -> str:
        key = (subject, relation.name)
        if key not in self.facts:
            self.facts[key] = self.draw_object(relation.object_type, exclude=(subject,))
        return self.facts[key]


_ARTICLE_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[AEIOUaeiou])")


def _fill(template: str, subject: str, obj: str | None = None) -> str:
    text = template.replace("{subject}", subject)
    if obj is None:
        return text
    text = text.replace("{object}", obj)
    return _ARTICLE_BEFORE_VOWEL.sub(r"\1n ", text)  # "works as an engineer"


def _capitalize_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def generate_synthetic_examples(
    num_examples: int = 2000,
    *,
    seed: int = 0,
    config: SyntheticDataConfig | None = None,
) -> list[EditExample]:
    """Generate ``num_examples`` synthetic edit examples, identical for identical ``seed`` and ``config``.

    Relations are used round-robin (in a seeded order) so every relation is represented; each
    (subject, relation) pair is edited at most once, so no two examples contradict each other.
    See the module docstring for what the data can and cannot teach.
    """
    if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 0:
        raise ValueError(f"num_examples must be a non-negative integer, got {num_examples!r}")
    config = config or SyntheticDataConfig()
    rng = random.Random(f"serac-synthetic:{seed}")
    world = _World(rng)
    relations = [r for r in RELATIONS if config.relations is None or r.name in config.relations]
    by_type: dict[str, list[Relation]] = {}
    for relation in RELATIONS:
        by_type.setdefault(relation.subject_type, []).append(relation)

    order: list[Relation] = []
    examples: list[EditExample] = []
    for index in range(num_examples):
        if not order:
            order = list(relations)
            rng.shuffle(order)
        relation = order.pop()
        # Reuse existing subjects half of the time so several edits touch one entity, as in real use.
        reuse = rng.random() < 0.5
        subject = (
            world.pick(relation.subject_type, lambda s, name=relation.name: (s, name) not in world.used)
            if reuse
            else None
        )
        subject = subject or world.new_entity(relation.subject_type)
        world.edited.add((subject, relation.name))
        world.used.add((subject, relation.name))
        old = world.fact(subject, relation)
        new = world.draw_object(relation.object_type, exclude=(old, subject))
        examples.append(_make_example(index, seed, rng, world, relation, subject, old, new, by_type, config))
    return examples


def _make_example(
    index: int,
    seed: int,
    rng: random.Random,
    world: _World,
    relation: Relation,
    subject: str,
    old: str,
    new: str,
    by_type: dict[str, list[Relation]],
    config: SyntheticDataConfig,
) -> EditExample:
    lead = rng.choice(_STATEMENT_LEADS)
    template = rng.choice(relation.statement_templates)
    body = _fill(template, subject, new)
    if lead and not template.startswith("{"):
        body = body[:1].lower() + body[1:]  # "Update: the capital of ...", not "Update: The capital of ..."
    statement = _capitalize_first(lead + body)

    form = rng.random()
    prompt_templates = list(relation.questions) + list(relation.clozes)
    if form < config.statement_fraction:
        # The sentence may adjust the name ("A Engine ..." becomes "An Engine ..."); then it names no subject.
        named = subject if mentions_subject(subject, statement) else None
        edit = Edit.from_statement(statement, subject=named)
        own_template = None
    else:
        pool = (
            relation.questions
            if form < config.statement_fraction + config.question_fraction
            else relation.clozes
        )
        own_template = rng.choice(pool)
        edit = Edit(prompt=own_template.replace("{subject}", "{}"), subject=subject, target=new)

    in_scope: list[InScopeQuery] = []
    if own_template is not None:
        in_scope.append(InScopeQuery(edit.query, new, (), "edit"))
    others = [t for t in prompt_templates if t != own_template]
    rng.shuffle(others)
    for template in others[: config.in_scope_phrasings]:
        kind = "question" if template in relation.questions else "cloze"
        in_scope.append(InScopeQuery(_fill(template, subject), new, (), kind))
    if config.yes_no_questions:
        in_scope.append(InScopeQuery(_fill(rng.choice(relation.yes_no), subject, new), "yes", (), "yes_no"))
        in_scope.append(InScopeQuery(_fill(rng.choice(relation.yes_no), subject, old), "no", (), "yes_no"))
    if config.indirect_phrasings:
        indirect_rng = random.Random(f"serac-synthetic-indirect:{seed}:{index}")
        count = min(config.indirect_phrasings, len(relation.indirect))
        for template in indirect_rng.sample(relation.indirect, count):
            in_scope.append(InScopeQuery(_fill(template, subject), new, (), "generation"))

    def phrase(template_relation: Relation, who: str) -> str:
        return _fill(rng.choice(template_relation.questions + template_relation.clozes), who)

    out_of_scope: list[OutOfScopeQuery] = []

    def add_fact_query(who: str, other: Relation, kind: str) -> None:
        world.used.add((who, other.name))
        out_of_scope.append(OutOfScopeQuery(phrase(other, who), kind, world.fact(who, other)))

    sibling_relations = [
        r
        for r in by_type[relation.subject_type]
        if r.name != relation.name and (subject, r.name) not in world.edited
    ]
    for other in rng.sample(
        sibling_relations, min(config.same_subject_other_relation, len(sibling_relations))
    ):
        add_fact_query(subject, other, "same_subject_other_relation")
    for _ in range(config.same_relation_other_subject):
        other_subject = None
        if rng.random() < 0.7:
            other_subject = world.pick(
                relation.subject_type, lambda s: s != subject and (s, relation.name) not in world.edited
            )
        other_subject = other_subject or world.new_entity(relation.subject_type)
        add_fact_query(other_subject, relation, "same_relation_other_subject")
    for _ in range(config.near_duplicate_name):
        twin = world.near_duplicate(subject)
        answer = world.draw_object(relation.object_type, exclude=(twin,))
        out_of_scope.append(OutOfScopeQuery(phrase(relation, twin), "near_duplicate_name", answer))
    if config.modified_names and subject.split(" ", 1)[0].lower() not in ("the", "a", "an"):
        modified_rng = random.Random(f"serac-synthetic-modified:{seed}:{index}")
        count = min(config.modified_names, len(_NAME_MODIFIERS))
        for modifier in modified_rng.sample(_NAME_MODIFIERS, count):
            text = _fill(modified_rng.choice(relation.questions + relation.clozes), f"{modifier} {subject}")
            out_of_scope.append(OutOfScopeQuery(text, "near_duplicate_name"))
    unrelated_relations = [r for r in RELATIONS if r.subject_type != relation.subject_type]
    for _ in range(config.unrelated):
        other = rng.choice(unrelated_relations)
        other_subject = world.pick(
            other.subject_type, lambda s, other=other: (s, other.name) not in world.edited
        )
        other_subject = other_subject or world.new_entity(other.subject_type)
        add_fact_query(other_subject, other, "unrelated")

    in_scope_keys = {normalize_text(query.text) for query in in_scope}
    unique_out: list[OutOfScopeQuery] = []
    for query in out_of_scope:
        key = normalize_text(query.text)
        if key not in in_scope_keys:
            in_scope_keys.add(key)
            unique_out.append(query)
    return EditExample(
        edit=edit,
        in_scope=tuple(in_scope),
        out_of_scope=tuple(unique_out),
        statement=statement,
        source="synthetic",
        case_id=f"synthetic-{seed}-{index}",
        relation=relation.name,
        true_answer=old,
    )
