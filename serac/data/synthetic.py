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
* relations outside :data:`RELATIONS`, one-to-many relations, temporal qualifiers, and edits that
  contradict each other.

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
from dataclasses import dataclass, field, replace

from serac.data.schema import EditExample, InScopeQuery, OutOfScopeQuery
from serac.edits import Edit, mentions_subject, normalize_text

logger = logging.getLogger(__name__)

__all__ = ["RELATIONS", "Relation", "SyntheticDataConfig", "generate_synthetic_examples"]


@dataclass(frozen=True)
class Relation:
    """A relation of the synthetic world with its phrasings.

    Templates use ``{subject}`` and ``{object}``. ``clozes`` end right before the object.
    """

    name: str
    subject_type: str
    object_type: str
    questions: tuple[str, ...]
    clozes: tuple[str, ...]
    yes_no: tuple[str, ...]
    statements: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.questions) < 4 or len(self.clozes) < 4 or not self.yes_no:
            raise ValueError(
                f"relation {self.name!r} needs >= 4 questions, >= 4 clozes and a yes/no template"
            )
        for template in (*self.questions, *self.clozes):
            if template.count("{subject}") != 1 or "{object}" in template:
                raise ValueError(f"relation {self.name!r}: bad query template {template!r}")
        for template in (*self.yes_no, *self.statements):
            if template.count("{subject}") != 1 or template.count("{object}") != 1:
                raise ValueError(f"relation {self.name!r}: bad template {template!r}")

    @property
    def statement_templates(self) -> tuple[str, ...]:
        """Every cloze completed by its object, plus the extra statement phrasings."""
        return (*(cloze + " {object}." for cloze in self.clozes), *self.statements)


def _r(name, subject_type, object_type, questions, clozes, yes_no, statements=()) -> Relation:
    return Relation(
        name, subject_type, object_type, tuple(questions), tuple(clozes), tuple(yes_no), tuple(statements)
    )


# Phrasings are written for this package. Several per relation, in different word orders, so a scope
# classifier has to match meaning rather than one sentence shape.
RELATIONS: tuple[Relation, ...] = (
    # ---- people
    _r(
        "citizenship",
        "person",
        "country",
        [
            "What is the country of citizenship of {subject}?",
            "Which country is {subject} a citizen of?",
            "Of which country does {subject} hold citizenship?",
            "What nationality does {subject} have?",
            "Where does {subject} hold citizenship?",
        ],
        [
            "{subject} is a citizen of",
            "{subject} holds the citizenship of",
            "The country of citizenship of {subject} is",
            "{subject} has the nationality of",
        ],
        ["Is {subject} a citizen of {object}?", "Does {subject} hold the citizenship of {object}?"],
        ["{subject} holds a passport of {object}."],
    ),
    _r(
        "sport",
        "person",
        "sport",
        [
            "Which sport does {subject} play?",
            "What sport is {subject} associated with?",
            "In which sport does {subject} compete?",
            "What is the sport of {subject}?",
        ],
        [
            "{subject} plays the sport of",
            "{subject} is a professional player of",
            "The sport {subject} competes in is",
            "{subject} is known for playing",
        ],
        ["Does {subject} play {object}?", "Is {subject} a {object} player?"],
        ["{subject} competes professionally in {object}."],
    ),
    _r(
        "employer",
        "person",
        "company",
        [
            "Who is the employer of {subject}?",
            "Which company does {subject} work for?",
            "Where is {subject} employed?",
            "For which organization does {subject} work?",
        ],
        [
            "{subject} works for",
            "{subject} is employed by",
            "The employer of {subject} is",
            "{subject} is on the payroll of",
        ],
        ["Does {subject} work for {object}?", "Is {subject} employed by {object}?"],
    ),
    _r(
        "birthplace",
        "person",
        "city",
        [
            "Where was {subject} born?",
            "What is the birthplace of {subject}?",
            "In which city was {subject} born?",
            "Which city is the place of birth of {subject}?",
        ],
        [
            "{subject} was born in",
            "The birthplace of {subject} is",
            "{subject} was born in the city of",
            "The city where {subject} was born is",
        ],
        ["Was {subject} born in {object}?"],
    ),
    _r(
        "native_language",
        "person",
        "language",
        [
            "What is the native language of {subject}?",
            "What is the mother tongue of {subject}?",
            "Which language did {subject} grow up speaking?",
            "What language does {subject} speak natively?",
        ],
        [
            "The mother tongue of {subject} is",
            "{subject} is a native speaker of",
            "The native language of {subject} is",
            "{subject} grew up speaking",
        ],
        ["Is {object} the native language of {subject}?", "Is {subject} a native speaker of {object}?"],
    ),
    _r(
        "instrument",
        "person",
        "instrument",
        [
            "Which instrument does {subject} play?",
            "What instrument is {subject} known for playing?",
            "What is the instrument of {subject}?",
            "Which musical instrument does {subject} perform on?",
        ],
        [
            "{subject} plays the",
            "The instrument {subject} plays is",
            "{subject} performs on the",
            "{subject} is best known as a player of the",
        ],
        ["Does {subject} play the {object}?"],
    ),
    _r(
        "occupation",
        "person",
        "occupation",
        [
            "What is the occupation of {subject}?",
            "What does {subject} do for a living?",
            "What is the profession of {subject}?",
            "What job does {subject} have?",
        ],
        [
            "{subject} works as a",
            "The occupation of {subject} is",
            "By profession, {subject} is a",
            "{subject} earns a living as a",
        ],
        ["Is {subject} a {object}?", "Does {subject} work as a {object}?"],
    ),
    _r(
        "alma_mater",
        "person",
        "university",
        [
            "Which university did {subject} attend?",
            "Where did {subject} study?",
            "What is the alma mater of {subject}?",
            "From which university did {subject} graduate?",
        ],
        [
            "{subject} graduated from",
            "The alma mater of {subject} is",
            "{subject} studied at",
            "{subject} received a degree from",
        ],
        ["Did {subject} study at {object}?", "Did {subject} graduate from {object}?"],
    ),
    _r(
        "religion",
        "person",
        "religion",
        [
            "What is the religion of {subject}?",
            "Which religion does {subject} follow?",
            "What faith does {subject} practice?",
            "Which religious tradition does {subject} belong to?",
        ],
        [
            "{subject} is a follower of",
            "The religion of {subject} is",
            "{subject} practices",
            "The faith of {subject} is",
        ],
        ["Does {subject} follow {object}?", "Is {object} the religion of {subject}?"],
    ),
    _r(
        "music_genre",
        "person",
        "music_genre",
        [
            "What genre of music does {subject} perform?",
            "Which musical genre is {subject} associated with?",
            "What kind of music does {subject} make?",
            "In which genre does {subject} record music?",
        ],
        [
            "{subject} performs",
            "The music genre of {subject} is",
            "{subject} is known for recording",
            "{subject} is a musician in the genre of",
        ],
        ["Does {subject} perform {object}?", "Is {subject} a {object} musician?"],
    ),
    _r(
        "field_of_work",
        "person",
        "field",
        [
            "What is the field of work of {subject}?",
            "In which field does {subject} work?",
            "What does {subject} research?",
            "Which discipline is {subject} known for?",
        ],
        [
            "{subject} works in the field of",
            "The field of work of {subject} is",
            "{subject} is a researcher in",
            "{subject} is known for contributions to",
        ],
        ["Does {subject} work in {object}?", "Is {object} the field of {subject}?"],
    ),
    _r(
        "spouse",
        "person",
        "person",
        [
            "Who is the spouse of {subject}?",
            "Who is {subject} married to?",
            "Whom did {subject} marry?",
            "What is the name of the spouse of {subject}?",
        ],
        [
            "{subject} is married to",
            "The spouse of {subject} is",
            "{subject} married",
            "The husband or wife of {subject} is",
        ],
        ["Is {subject} married to {object}?"],
    ),
    _r(
        "residence",
        "person",
        "city",
        [
            "Where does {subject} live?",
            "In which city does {subject} reside?",
            "What is the place of residence of {subject}?",
            "Which city is {subject} living in?",
        ],
        [
            "{subject} lives in",
            "{subject} resides in",
            "The place of residence of {subject} is",
            "{subject} currently makes a home in",
        ],
        ["Does {subject} live in {object}?"],
    ),
    # ---- companies
    _r(
        "headquarters",
        "company",
        "city",
        [
            "Where is the headquarters of {subject}?",
            "In which city is {subject} headquartered?",
            "Where is {subject} based?",
            "What city houses the head office of {subject}?",
        ],
        [
            "{subject} is headquartered in",
            "The headquarters of {subject} is in",
            "{subject} is based in",
            "The head office of {subject} is located in",
        ],
        ["Is {subject} headquartered in {object}?", "Is {subject} based in {object}?"],
    ),
    _r(
        "founder",
        "company",
        "person",
        [
            "Who founded {subject}?",
            "Who is the founder of {subject}?",
            "By whom was {subject} established?",
            "Who started the company {subject}?",
        ],
        [
            "{subject} was founded by",
            "The founder of {subject} is",
            "{subject} was established by",
            "The company {subject} was started by",
        ],
        ["Was {subject} founded by {object}?", "Is {object} the founder of {subject}?"],
    ),
    _r(
        "industry",
        "company",
        "industry",
        [
            "What industry is {subject} in?",
            "In which industry does {subject} operate?",
            "What is the industry of {subject}?",
            "Which sector does {subject} belong to?",
        ],
        [
            "{subject} operates in the industry of",
            "The industry of {subject} is",
            "{subject} is a company in",
            "{subject} does business in",
        ],
        ["Does {subject} operate in {object}?", "Is {subject} a company in {object}?"],
    ),
    _r(
        "chief_executive",
        "company",
        "person",
        [
            "Who is the chief executive of {subject}?",
            "Who runs {subject}?",
            "Who is the CEO of {subject}?",
            "Who leads the company {subject}?",
        ],
        [
            "The chief executive of {subject} is",
            "{subject} is run by",
            "The CEO of {subject} is",
            "The company {subject} is led by",
        ],
        ["Is {object} the CEO of {subject}?", "Is {subject} run by {object}?"],
    ),
    _r(
        "company_country",
        "company",
        "country",
        [
            "Which country is {subject} from?",
            "What is the country of origin of {subject}?",
            "In which country was {subject} formed?",
            "Where does the company {subject} come from?",
        ],
        [
            "{subject} is a company from",
            "The country of origin of {subject} is",
            "{subject} was formed in",
            "The company {subject} comes from",
        ],
        ["Is {subject} a company from {object}?"],
    ),
    _r(
        "parent_company",
        "company",
        "company",
        [
            "What is the parent company of {subject}?",
            "Which company owns {subject}?",
            "Who owns {subject}?",
            "{subject} is a subsidiary of which company?",
        ],
        [
            "{subject} is owned by",
            "The parent company of {subject} is",
            "{subject} is a subsidiary of",
            "The owner of {subject} is",
        ],
        ["Is {subject} owned by {object}?", "Is {subject} a subsidiary of {object}?"],
    ),
    # ---- cities
    _r(
        "city_country",
        "city",
        "country",
        [
            "Which country is {subject} in?",
            "In what country is the city of {subject}?",
            "Where is {subject} located?",
            "To which country does {subject} belong?",
        ],
        [
            "{subject} is a city in",
            "The city of {subject} is located in",
            "{subject} lies in the country of",
            "{subject} belongs to",
        ],
        ["Is {subject} in {object}?", "Is {subject} a city in {object}?"],
    ),
    _r(
        "mayor",
        "city",
        "person",
        [
            "Who is the mayor of {subject}?",
            "Who governs the city of {subject}?",
            "Who leads the city council of {subject}?",
            "Who was elected mayor of {subject}?",
        ],
        [
            "The mayor of {subject} is",
            "The city of {subject} is governed by",
            "{subject} has as its mayor",
            "The elected mayor of {subject} is",
        ],
        ["Is {object} the mayor of {subject}?"],
    ),
    _r(
        "twin_city",
        "city",
        "city",
        [
            "What is the twin city of {subject}?",
            "Which city is {subject} twinned with?",
            "What is the sister city of {subject}?",
            "With which city does {subject} have a partnership?",
        ],
        [
            "{subject} is twinned with",
            "The twin city of {subject} is",
            "The sister city of {subject} is",
            "{subject} has a partnership with the city of",
        ],
        ["Is {subject} twinned with {object}?"],
    ),
    # ---- countries
    _r(
        "capital",
        "country",
        "city",
        [
            "What is the capital of {subject}?",
            "Which city is the capital of {subject}?",
            "Where is the seat of government of {subject}?",
            "What is the capital city of {subject}?",
        ],
        [
            "The capital of {subject} is",
            "The capital city of {subject} is",
            "The seat of government of {subject} is",
            "{subject} is governed from",
        ],
        ["Is {object} the capital of {subject}?"],
    ),
    _r(
        "head_of_state",
        "country",
        "person",
        [
            "Who is the head of state of {subject}?",
            "Who leads {subject}?",
            "Who is the current head of state in {subject}?",
            "What is the name of the leader of {subject}?",
        ],
        [
            "The head of state of {subject} is",
            "{subject} is led by",
            "The current head of state in {subject} is",
            "The leader of {subject} is",
        ],
        ["Is {object} the head of state of {subject}?"],
    ),
    _r(
        "currency",
        "country",
        "currency",
        [
            "What is the currency of {subject}?",
            "Which currency is used in {subject}?",
            "What money do people use in {subject}?",
            "What is the official currency of {subject}?",
        ],
        [
            "The currency of {subject} is the",
            "The official currency of {subject} is the",
            "People in {subject} pay with the",
            "{subject} uses the currency",
        ],
        ["Is the {object} the currency of {subject}?"],
    ),
    _r(
        "official_language",
        "country",
        "language",
        [
            "What is the official language of {subject}?",
            "Which language is spoken in {subject}?",
            "What language do people speak in {subject}?",
            "In {subject}, what is the official language?",
        ],
        [
            "The official language of {subject} is",
            "In {subject}, people speak",
            "The language of {subject} is",
            "Most people in {subject} speak",
        ],
        ["Is {object} the official language of {subject}?"],
    ),
    _r(
        "continent",
        "country",
        "continent",
        [
            "On which continent is {subject}?",
            "Which continent is {subject} located on?",
            "What continent is {subject} part of?",
            "Where in the world is {subject}?",
        ],
        [
            "{subject} is located on the continent of",
            "{subject} is a country in",
            "The continent of {subject} is",
            "{subject} is part of",
        ],
        ["Is {subject} in {object}?"],
    ),
    # ---- books
    _r(
        "author",
        "book",
        "person",
        [
            "Who wrote {subject}?",
            "Who is the author of {subject}?",
            "By whom was {subject} written?",
            "Who is the writer of the book {subject}?",
        ],
        [
            "{subject} was written by",
            "The author of {subject} is",
            "The book {subject} is by",
            "{subject} is a novel by",
        ],
        ["Did {object} write {subject}?", "Is {object} the author of {subject}?"],
    ),
    _r(
        "book_language",
        "book",
        "language",
        [
            "In which language was {subject} written?",
            "What is the original language of {subject}?",
            "What language is the book {subject} in?",
            "In what language was {subject} first published?",
        ],
        [
            "{subject} was written in",
            "The original language of {subject} is",
            "The book {subject} is written in",
            "{subject} was first published in",
        ],
        ["Was {subject} written in {object}?"],
    ),
    _r(
        "literary_genre",
        "book",
        "literary_genre",
        [
            "What is the genre of {subject}?",
            "Which literary genre does {subject} belong to?",
            "What kind of book is {subject}?",
            "What genre is the book {subject}?",
        ],
        [
            "{subject} is a work of",
            "The genre of {subject} is",
            "The book {subject} belongs to the genre of",
            "{subject} is classified as",
        ],
        ["Is {subject} a work of {object}?"],
    ),
    _r(
        "publisher",
        "book",
        "company",
        [
            "Who published {subject}?",
            "Which company is the publisher of {subject}?",
            "Who is the publisher of {subject}?",
            "By which publisher was {subject} released?",
        ],
        [
            "{subject} was published by",
            "The publisher of {subject} is",
            "{subject} was released by",
            "The book {subject} came out with",
        ],
        ["Was {subject} published by {object}?"],
    ),
    # ---- films
    _r(
        "director",
        "film",
        "person",
        [
            "Who directed {subject}?",
            "Who is the director of {subject}?",
            "By whom was the film {subject} directed?",
            "Who was the director of the movie {subject}?",
        ],
        [
            "{subject} was directed by",
            "The director of {subject} is",
            "The film {subject} was made by the director",
            "The movie {subject} is directed by",
        ],
        ["Did {object} direct {subject}?", "Is {object} the director of {subject}?"],
    ),
    _r(
        "film_language",
        "film",
        "language",
        [
            "What is the original language of the film {subject}?",
            "In which language was {subject} filmed?",
            "What language is spoken in the movie {subject}?",
            "In what language was the film {subject} made?",
        ],
        [
            "The original language of the film {subject} is",
            "{subject} was filmed in",
            "The movie {subject} is in",
            "The language of the film {subject} is",
        ],
        ["Was {subject} filmed in {object}?"],
    ),
    _r(
        "composer",
        "film",
        "person",
        [
            "Who composed the music for {subject}?",
            "Who is the composer of the score of {subject}?",
            "Who wrote the soundtrack of {subject}?",
            "Whose music is heard in the film {subject}?",
        ],
        [
            "The music of {subject} was composed by",
            "The score of {subject} is by",
            "The soundtrack of {subject} was written by",
            "The composer of the film {subject} is",
        ],
        ["Did {object} compose the music for {subject}?"],
    ),
    # ---- bands
    _r(
        "band_genre",
        "band",
        "music_genre",
        [
            "What genre does the band {subject} play?",
            "What kind of music does {subject} play?",
            "Which genre is the band {subject} known for?",
            "What style of music is {subject}?",
        ],
        [
            "The band {subject} plays",
            "{subject} is a band known for",
            "The genre of the band {subject} is",
            "The music of {subject} is",
        ],
        ["Does the band {subject} play {object}?"],
    ),
    _r(
        "band_origin",
        "band",
        "city",
        [
            "Where was the band {subject} formed?",
            "Which city does {subject} come from?",
            "What is the hometown of the band {subject}?",
            "In which city did {subject} start out?",
        ],
        [
            "The band {subject} was formed in",
            "{subject} comes from",
            "The hometown of the band {subject} is",
            "{subject} started out in",
        ],
        ["Was the band {subject} formed in {object}?"],
    ),
    _r(
        "record_label",
        "band",
        "company",
        [
            "What record label is {subject} signed to?",
            "Which label releases the music of {subject}?",
            "Who is the record label of {subject}?",
            "Which company publishes the records of {subject}?",
        ],
        [
            "{subject} is signed to",
            "The record label of {subject} is",
            "The music of {subject} is released by",
            "The band {subject} records for",
        ],
        ["Is {subject} signed to {object}?"],
    ),
    # ---- universities
    _r(
        "university_city",
        "university",
        "city",
        [
            "In which city is {subject}?",
            "Where is {subject} located?",
            "Which city is home to {subject}?",
            "Where is the campus of {subject}?",
        ],
        [
            "{subject} is located in",
            "The campus of {subject} is in",
            "{subject} is a university in",
            "The city that is home to {subject} is",
        ],
        ["Is {subject} located in {object}?"],
    ),
)

#: Statements that name the object first ("Adolf Loos is the mayor of Brnovo."), for the relations whose
#: object is one person or place. The fact is still about the subject: "Who is the mayor of Brnovo?" asks it.
_OBJECT_FIRST_STATEMENTS: dict[str, tuple[str, ...]] = {
    "spouse": ("{object} is the spouse of {subject}.", "{object} is married to {subject}."),
    "founder": ("{object} founded {subject}.", "{object} is the founder of {subject}."),
    "chief_executive": ("{object} is the chief executive of {subject}.", "{object} runs {subject}."),
    "mayor": ("{object} is the mayor of {subject}.",),
    "capital": ("{object} is the capital of {subject}.",),
    "head_of_state": ("{object} is the head of state of {subject}.",),
    "author": ("{object} wrote {subject}.", "{object} is the author of {subject}."),
    "director": ("{object} directed {subject}.",),
    "composer": ("{object} composed the music for {subject}.",),
}
RELATIONS = tuple(
    replace(relation, statements=relation.statements + _OBJECT_FIRST_STATEMENTS.get(relation.name, ()))
    for relation in RELATIONS
)

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
        same_subject_other_relation: out-of-scope queries per edit about the same subject and another relation.
        same_relation_other_subject: out-of-scope queries per edit about another subject and the same relation.
        near_duplicate_name: out-of-scope queries per edit about a near-duplicate of the subject's name.
        unrelated: unrelated out-of-scope queries per edit.
        relations: names of the relations to use (default: all of :data:`RELATIONS`).
    """

    question_fraction: float = field(default=0.4, metadata={"help": "share of question-form edits"})
    statement_fraction: float = field(default=0.2, metadata={"help": "share of statement-form edits"})
    in_scope_phrasings: int = field(default=6, metadata={"help": "templated in-scope queries per edit"})
    yes_no_questions: bool = field(default=True, metadata={"help": "add yes/no in-scope questions"})
    same_subject_other_relation: int = field(default=2, metadata={"help": "hard negatives: same subject"})
    same_relation_other_subject: int = field(default=2, metadata={"help": "hard negatives: same relation"})
    near_duplicate_name: int = field(default=2, metadata={"help": "hard negatives: near-duplicate name"})
    unrelated: int = field(default=2, metadata={"help": "easy negatives"})
    relations: tuple[str, ...] | None = field(default=None, metadata={"help": "relation names to use"})

    def __post_init__(self) -> None:
        for name in ("question_fraction", "statement_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.question_fraction + self.statement_fraction > 1.0:
            raise ValueError("question_fraction + statement_fraction must not exceed 1")
        for name in ("in_scope_phrasings", "same_subject_other_relation", "same_relation_other_subject",
                     "near_duplicate_name", "unrelated"):  # fmt: skip
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
