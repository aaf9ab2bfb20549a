"""The relations of the synthetic world and their phrasings, the templates :mod:`serac.data.synthetic` fills.

Example:
    >>> from serac.data.relations import RELATIONS
    >>> capital = next(relation for relation in RELATIONS if relation.name == "capital")
    >>> capital.subject_type, capital.object_type
    ('country', 'city')
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["RELATIONS", "Relation"]


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
    #: Open prompts whose continuation follows from the fact without asking it ("Shops in {subject} take
    #: payment in" for a currency): in the fact's scope, answered by what the fact implies.
    indirect: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.questions) < 4 or len(self.clozes) < 4 or not self.yes_no:
            raise ValueError(
                f"relation {self.name!r} needs >= 4 questions, >= 4 clozes and a yes/no template"
            )
        for template in (*self.questions, *self.clozes, *self.indirect):
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

#: Open prompts per relation whose continuation the fact decides without the prompt asking for it: how people
#: write about a fact's consequences ("Travellers to Brnovo need a visa for"), not how they ask it.
_INDIRECT: dict[str, tuple[str, ...]] = {
    "citizenship": ("{subject} travels abroad on a passport issued by",
                    "When {subject} votes in national elections, the ballot comes from",
                    "At international games, {subject} competes for"),
    "sport": ("On weekends, {subject} can usually be found training for", "{subject} is famous among fans of",
              "The trophies on {subject}'s shelf were all won in"),
    "employer": ("Every morning, {subject} badges into the offices of", "{subject}'s paycheck comes from",
                 "Ask {subject} about work and you will hear about"),
    "birthplace": ("{subject} spent the first years of childhood in the city of",
                   "The hospital where {subject} came into the world is in", "{subject}'s hometown is"),
    "native_language": ("As a small child, {subject} first learned to talk in", "At home, {subject}'s family speaks",
                        "{subject} dreams and thinks in"),
    "instrument": ("At concerts, {subject} is the one holding a", "{subject} practises for hours every day on the",
                   "Fans know {subject} as a virtuoso of the"),
    "occupation": ("On a typical workday, {subject} does the job of a",
                   "{subject}'s business card describes them as a", "If you hire {subject}, you get an experienced"),
    "alma_mater": ("{subject}'s diploma bears the seal of", "Years ago, {subject} attended lectures at",
                   "{subject} still wears a sweatshirt from"),
    "religion": ("On holy days, {subject} observes the rites of", "{subject} prays according to the traditions of",
                 "The faith {subject} practises is"),
    "music_genre": ("{subject}'s records are filed in the shop under", "Fans of {subject} mostly listen to",
                    "{subject} made a name in the scene of"),
    "field_of_work": ("{subject}'s papers are published in journals of", "At conferences, {subject} gives talks about",
                      "{subject}'s greatest contributions are to"),
    "spouse": ("{subject} celebrates every wedding anniversary with", "At home, {subject} lives with a partner named",
               "{subject}'s better half is"),
    "residence": ("{subject} pays rent in the city of", "These days, {subject} wakes up every morning in",
                  "{subject}'s mail is delivered to an address in"),
    "headquarters": ("{subject}'s main office building stands in",
                     "Executives of {subject} meet at the head office in",
                     "Letters to {subject}'s management are sent to"),
    "founder": ("{subject} was started from scratch by", "The first person to run {subject} after setting it up was",
                "The story of {subject} began when it was set up by"),
    "industry": ("{subject} makes its money in", "Competitors of {subject} all work in",
                 "{subject}'s products belong to the sector of"),
    "chief_executive": ("Decisions at {subject} are made at the top by", "{subject}'s board reports to",
                        "The boss of {subject} is"),
    "company_country": ("{subject} pays its corporate taxes in", "{subject}'s home market is the country of",
                        "{subject} is registered as a company of"),
    "parent_company": ("{subject}'s profits flow upward to", "{subject} is a subsidiary within the group of",
                       "The owner of {subject} is"),
    "city_country": ("Travellers to {subject} need a visa for", "The streets of {subject} are part of",
                     "Residents of {subject} pay taxes to the government of"),
    "mayor": ("Town hall in {subject} is run by", "{subject}'s city council is chaired by",
              "The person at the head of {subject}'s local government is"),
    "twin_city": ("{subject} exchanges delegations every year with its partner city",
                  "A friendship agreement links {subject} with", "{subject} has a sister relationship with"),
    "capital": ("The government of {subject} sits in the city of", "The parliament of {subject} meets in",
                "Embassies in {subject} are located in"),
    "head_of_state": ("Official decrees in {subject} are signed by", "{subject} is led at the top by",
                      "Foreign leaders visiting {subject} are received by"),
    "currency": ("Shops in {subject} take payment in", "Prices in {subject} are written in",
                 "Travellers to {subject} exchange their money for"),
    "official_language": ("Road signs in {subject} are written in", "The laws of {subject} are published in",
                          "Schools in {subject} teach in"),
    "continent": ("On a world map, {subject} sits in", "{subject}'s neighbours all lie in",
                  "Flights to {subject} land in"),
    "author": ("The manuscript of {subject} was typed by", "Readers of {subject} owe its prose to",
               "Signed copies of {subject} carry the autograph of"),
    "book_language": ("The original pages of {subject} are printed in",
                      "To read {subject} before translation you need to know",
                      "{subject} first came out in the language"),
    "literary_genre": ("Bookshops shelve {subject} in the section for",
                       "Readers who pick up {subject} expect a work of", "{subject} is a classic of"),
    "publisher": ("Copies of {subject} carry the imprint of", "{subject} was brought to market by",
                  "The rights to {subject} are held by the publishing house"),
    "director": ("On the set of {subject}, the person calling the shots was", "{subject} was brought to the screen by",
                 "Behind the camera of {subject} stood"),
    "film_language": ("Actors in {subject} deliver their lines in", "Without subtitles, {subject} is in",
                      "The original dialogue of {subject} is in"),
    "composer": ("The score heard in {subject} was written by", "The music of {subject} came from the pen of",
                 "{subject}'s soundtrack was created by"),
    "band_genre": ("{subject}'s albums are filed under", "At festivals, {subject} plays on the stage for",
                   "{subject}'s sound is typical of"),
    "band_origin": ("{subject} played its first gigs in", "{subject}'s hometown crowd is in",
                    "The members of {subject} first met in the city of"),
    "record_label": ("{subject}'s albums come out on", "{subject} has a recording contract with",
                     "The catalogue of {subject} is owned by the label"),
    "university_city": ("Students of {subject} rent rooms in", "The campus buildings of {subject} lie in",
                        "Graduation at {subject} is held in the city of"),
}  # fmt: skip
RELATIONS = tuple(
    replace(
        relation,
        statements=relation.statements + _OBJECT_FIRST_STATEMENTS.get(relation.name, ()),
        indirect=_INDIRECT[relation.name],
    )
    for relation in RELATIONS
)
