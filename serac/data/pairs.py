"""``datasets.Dataset`` views of edit examples, as the two trained parts of SERAC consume them.

* :func:`examples_to_dataset`: one row per example, every field kept (for saving or inspecting);
* :func:`scope_pairs`: (edit text, query, label) rows for the scope classifier, in-scope against easy and
  hard out-of-scope pairs, balanced per edit;
* :func:`counterfactual_pairs`: (edit, query, answer, response) rows for the counterfactual model: the edit
  with its paraphrases, its statement form, yes/no questions and single-edit multi-hop questions. The
  *response* is what the model learns to write, in the base model's voice: a question gets a sentence that
  states the new answer, a cloze prompt its continuation; the *answer* stays the bare target that metrics
  look for.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import replace

from datasets import Dataset, Features, List, Value

from serac.data.schema import IN_SCOPE_KINDS, EditExample
from serac.data.targets import with_unusual_targets
from serac.edits import Edit, mentions_subject, normalize_text

logger = logging.getLogger(__name__)

__all__ = [
    "ANSWER_STYLES",
    "COUNTERFACTUAL_KINDS",
    "counterfactual_pairs",
    "edits_from_column",
    "examples_to_dataset",
    "is_question",
    "response_answer_first",
    "response_in_voice",
    "scope_pairs",
]

#: In-scope kinds with an exact answer, used to train the counterfactual model by default.
COUNTERFACTUAL_KINDS: tuple[str, ...] = ("edit", "question", "cloze", "paraphrase", "yes_no")

#: How the counterfactual model's training responses are written: ``"voice"`` (a sentence for a question, a
#: continuation for a cloze prompt, as the base model would answer), ``"answer_first"`` (a question's answer as
#: the edit writes it, then that sentence: see :func:`response_answer_first`) or ``"bare"`` (the answer span
#: alone).
ANSWER_STYLES: tuple[str, ...] = ("voice", "answer_first", "bare")

_EDIT_FEATURES = {name: Value("string") for name in ("prompt", "target", "subject", "statement")}
_QUERY_FEATURES = {"text": Value("string"), "answer": Value("string"), "aliases": List(Value("string"))}
EXAMPLE_FEATURES = Features(
    {
        "edit": _EDIT_FEATURES,
        "in_scope": List({**_QUERY_FEATURES, "kind": Value("string")}),
        "out_of_scope": List({**_QUERY_FEATURES, "kind": Value("string")}),
        "portability": List(_QUERY_FEATURES),
        "statement": Value("string"),
        "companion_edits": List(_EDIT_FEATURES),
        "source": Value("string"),
        "case_id": Value("string"),
        "relation": Value("string"),
        "true_answer": Value("string"),
    }
)


def _full_edit_dict(edit_dict: dict) -> dict:
    return {name: edit_dict.get(name) for name in _EDIT_FEATURES}


def examples_to_dataset(examples: Sequence[EditExample]) -> Dataset:
    """One row per example with every field (inverse: ``EditExample.from_dict`` on each row)."""
    rows = []
    for example in examples:
        row = example.to_dict()
        row["edit"] = _full_edit_dict(row["edit"])
        row["companion_edits"] = [_full_edit_dict(edit) for edit in row["companion_edits"]]
        rows.append(row)
    return Dataset.from_list(rows, features=EXAMPLE_FEATURES)


def _check_examples(examples: Sequence[EditExample]) -> list[EditExample]:
    examples = list(examples)
    for example in examples:
        if not isinstance(example, EditExample):
            raise TypeError(f"examples must be EditExample objects, got {type(example).__name__}")
    return examples


def _maybe_statement(example: EditExample, rng: random.Random, statement_fraction: float) -> EditExample:
    # Draw the random number only for examples that could switch, so other examples' choices stay put.
    can_switch = statement_fraction > 0 and example.statement is not None and not example.edit.is_statement
    if can_switch and rng.random() < statement_fraction:
        return example.as_statement_edit()
    return example


def _maybe_question(example: EditExample, rng: random.Random, question_fraction: float) -> EditExample:
    """The example with its edit written as one of its own questions with the answer, for a share of examples
    (a correction as people often write it: "What is the industry of Tiamuk Media? video games")."""
    if question_fraction <= 0 or example.edit.is_statement or not example.answer:
        return example
    questions = [
        query.text
        for query in example.in_scope
        if query.kind == "question" and query.answer == example.answer
    ]
    if not questions or rng.random() >= question_fraction:
        return example
    edit = Edit(prompt=rng.choice(questions), target=example.answer, subject=example.edit.subject)
    return replace(example, edit=edit)


def scope_pairs(
    examples: Sequence[EditExample],
    *,
    negatives_per_positive: float = 1.0,
    hard_negative_fraction: float = 0.5,
    max_positives_per_edit: int | None = None,
    statement_fraction: float = 0.0,
    subject_match: bool = False,
    context_fraction: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """(edit text, query) pairs labelled in scope (1.0) or out of scope (0.0), for the scope classifier.

    Per edit, every in-scope query (up to ``max_positives_per_edit``) is a positive, and
    ``negatives_per_positive`` times as many negatives are drawn: a ``hard_negative_fraction`` share
    from the edit's hard out-of-scope queries (same subject, same relation, near-duplicate name, other
    hop, embedding neighbour) as far as it has them, the rest easy: its unrelated queries and, as in the
    SERAC paper, in-scope queries of other edits. Balancing per edit keeps every edit equally weighted.

    Args:
        examples: the edit examples.
        negatives_per_positive: negatives drawn per positive.
        hard_negative_fraction: share of the negatives that are hard.
        max_positives_per_edit: cap on positives per edit (``None``: all).
        statement_fraction: share of examples (with a statement) whose edit is given in statement form.
        subject_match: train for a classifier that only sees queries naming an edit's subject (see
            :attr:`serac.scope.ScopeClassifierConfig.subject_match`): for an edit with a subject, the hard
            negatives are those that name it (another relation of the same subject, mined neighbours about
            it) as far as there are such, since the others never reach the classifier.
        context_fraction: share of queries asked after an unrelated sentence (another example's statement),
            as a user's question after some context or CounterFact's paraphrase prompts are written.
        seed: seeds every random choice.

    Returns:
        A ``Dataset`` with columns ``edit_text`` (the edit with its target), ``edit_query`` (the edit without
        its target: the prompt with the subject, or the statement), ``edit_subject`` (``""`` when the edit
        names none), ``query``, ``label`` (float) and ``kind``.
    """
    examples = _check_examples(examples)
    if negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive must be >= 0, got {negatives_per_positive}")
    if not 0.0 <= hard_negative_fraction <= 1.0:
        raise ValueError(f"hard_negative_fraction must be in [0, 1], got {hard_negative_fraction}")
    if not 0.0 <= statement_fraction <= 1.0:
        raise ValueError(f"statement_fraction must be in [0, 1], got {statement_fraction}")
    if max_positives_per_edit is not None and max_positives_per_edit < 1:
        raise ValueError(f"max_positives_per_edit must be >= 1 or None, got {max_positives_per_edit}")
    if not 0.0 <= context_fraction <= 1.0:
        raise ValueError(f"context_fraction must be in [0, 1], got {context_fraction}")
    rng = random.Random(f"scope-pairs:{seed}")
    # A separate stream, so turning the context augmentation on does not change the other choices.
    context_rng = random.Random(f"scope-pairs-context:{seed}")
    contexts = [example.statement for example in examples if example.statement]
    edit_keys = [example.edit.key for example in examples]
    rows: dict[str, list] = {
        "edit_text": [], "edit_query": [], "edit_subject": [], "query": [], "label": [], "kind": []
    }  # fmt: skip

    def add(edit: Edit, query: str, label: float, kind: str) -> None:
        if contexts and context_fraction and context_rng.random() < context_fraction:
            lead = context_rng.choice(contexts)
            if edit.subject is None or not mentions_subject(edit.subject, lead):
                query = f"{lead} {query}"
        rows["edit_text"].append(edit.text)
        rows["edit_query"].append(edit.query)
        rows["edit_subject"].append(edit.subject or "")
        rows["query"].append(query)
        rows["label"].append(label)
        rows["kind"].append(kind)

    for index, original in enumerate(examples):
        example = _maybe_statement(original, rng, statement_fraction)
        positives = list(example.in_scope)
        if max_positives_per_edit is not None and len(positives) > max_positives_per_edit:
            positives = rng.sample(positives, max_positives_per_edit)
        for query in positives:
            add(example.edit, query.text, 1.0, query.kind)

        wanted = round(len(positives) * negatives_per_positive)
        hard = list(example.hard_out_of_scope)
        rng.shuffle(hard)
        subject = example.edit.subject
        if subject_match and subject is not None:
            # Stable sort: the shuffled order stays within each group, the ones naming the subject come first.
            hard.sort(key=lambda query: not mentions_subject(subject, query.text))
        hard = hard[: min(len(hard), round(wanted * hard_negative_fraction))]
        for query in hard:
            add(example.edit, query.text, 0.0, query.kind)
        easy = list(example.easy_out_of_scope)
        rng.shuffle(easy)
        easy_needed = wanted - len(hard)
        for query in easy[:easy_needed]:
            add(example.edit, query.text, 0.0, query.kind)
        easy_needed -= min(easy_needed, len(easy))
        own = {normalize_text(query.text) for query in (*example.in_scope, *example.out_of_scope)}
        attempts = 0
        # Other edits' in-scope queries: the easy negatives of the SERAC paper.
        while easy_needed > 0 and len(examples) > 1 and attempts < 10 * easy_needed:
            attempts += 1
            other = rng.randrange(len(examples))
            if other == index or edit_keys[other] == edit_keys[index] or not examples[other].in_scope:
                continue
            query = rng.choice(examples[other].in_scope).text
            if normalize_text(query) in own:
                continue
            own.add(normalize_text(query))
            add(example.edit, query, 0.0, "other_edit")
            easy_needed -= 1
    dataset = Dataset.from_dict(
        rows,
        features=Features(
            {
                "edit_text": Value("string"),
                "edit_query": Value("string"),
                "edit_subject": Value("string"),
                "query": Value("string"),
                "label": Value("float32"),
                "kind": Value("string"),
            }
        ),
    )
    positives = sum(rows["label"])
    logger.info("Scope pairs: %d positive, %d negative", int(positives), len(dataset) - int(positives))
    return dataset


def is_question(text: str) -> bool:
    """Whether a query asks a question (and so is answered with a sentence) rather than being a cloze."""
    return text.rstrip().endswith("?")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".!?" else f"{text}."


def _sentence_start(text: str) -> str:
    """``text`` as the start of a sentence: its first letter capitalized, unless its first word is written in
    mixed case ("iPad", "eBay"), which a capital would misspell."""
    first_word = (text.split() or [""])[0]
    return text if first_word[1:].lower() != first_word[1:] else text[:1].upper() + text[1:]


def _without_label(statement: str) -> str:
    # A label in front of a statement ("Update: ...") is not part of an answer.
    statement = re.sub(r"^[A-Z][\w ]{0,30}:\s+", "", statement.strip())
    return _sentence(_sentence_start(statement))


def _answer_sentence(example: EditExample) -> str | None:
    """One sentence stating the edit's new answer, from the example's own forms; ``None`` if it has none."""
    edit, target = example.edit, example.answer
    if edit.is_statement:
        return _without_label(edit.statement)
    if target is None:
        return None
    if not is_question(edit.query):
        return _sentence(edit.text)
    # A question-form edit: its cloze paraphrases, or its statement, state the same fact as a sentence.
    for query in example.in_scope:
        if query.kind == "cloze" and query.answer == target:
            return _sentence(f"{query.text} {target}")
    if example.statement and normalize_text(target) in normalize_text(example.statement):
        return _without_label(example.statement)
    return None


def response_in_voice(query: str, answer: str, kind: str, sentence: str | None) -> str:
    """What the counterfactual model should write for ``query``, in the voice of an instruction-tuned model.

    A cloze prompt gets its continuation (``"football."``); a question gets a sentence stating the answer
    (``sentence``, the edit stated with its new target), a yes/no question ``"Yes."`` or ``"No."`` followed
    by it. Without a sentence that holds the answer (a multi-hop question), the answer alone.

    Example:
        >>> response_in_voice("What sport does LeBron James play?", "football", "question",
        ...                   "LeBron James plays the sport of football.")
        'LeBron James plays the sport of football.'
        >>> response_in_voice("LeBron James plays the sport of", "football", "cloze", None)
        'football.'
    """
    answer = answer.strip()
    if kind == "yes_no" and answer.lower() in ("yes", "no"):
        opening = f"{answer.capitalize()}."
        return f"{opening} {sentence}" if sentence else opening
    if not is_question(query):
        return _sentence(answer)
    if sentence and normalize_text(answer) in normalize_text(sentence):
        return sentence
    return _sentence(answer)


def response_answer_first(query: str, answer: str, kind: str, sentence: str | None) -> str:
    """:func:`response_in_voice`'s response, with a question's answer first, as the edit writes it.

    A model that writes its sentence straight away tends to write the answer it expects there (the year it
    knows, the spelling it knows) instead of the edit's; copying the answer first and then saying it in a
    sentence keeps the edit's words. Cloze prompts and yes/no questions are answered as in voice.

    Example:
        >>> response_answer_first("What sport does LeBron James play?", "football", "question",
        ...                       "LeBron James plays the sport of football.")
        'Football. LeBron James plays the sport of football.'
        >>> response_answer_first("What did Apple release in 2010?", "iPad", "question", "Apple released the iPad in 2010.")
        'iPad. Apple released the iPad in 2010.'
    """
    voiced = response_in_voice(query, answer, kind, sentence)
    answer = answer.strip()
    if kind == "yes_no" or not is_question(query):
        return voiced
    first = _sentence(_sentence_start(answer))
    return voiced if voiced == first or voiced == _sentence(answer) else f"{first} {voiced}"


def counterfactual_pairs(
    examples: Sequence[EditExample],
    *,
    kinds: Sequence[str] = COUNTERFACTUAL_KINDS,
    statement_fraction: float = 0.25,
    include_portability: bool = True,
    answer_style: str = "voice",
    unusual_target_fraction: float = 0.0,
    question_fraction: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """(edit, query, answer, response) rows for teacher-forced training of the counterfactual model.

    Args:
        examples: the edit examples.
        kinds: in-scope kinds to use (``generation`` prompts have no exact answer and are left out by default).
        statement_fraction: share of examples (with a statement) whose edit is given in statement form,
            so the model learns to read statement edits too.
        include_portability: add the multi-hop questions of examples without companion edits (the
            counterfactual model sees one edit, so questions that need several are left out).
        answer_style: one of :data:`ANSWER_STYLES`: ``"voice"`` trains responses in the base model's voice
            (:func:`response_in_voice`), ``"answer_first"`` the answer then that response
            (:func:`response_answer_first`), ``"bare"`` the answer span alone.
        unusual_target_fraction: share of examples whose new answer is replaced by an unusual one (a full
            date, a typo, a long or numbered name: :func:`serac.data.targets.with_unusual_targets`), so the model
            learns to copy an edit's answer as written.
        question_fraction: share of the other examples whose edit is written as one of its own questions
            followed by the answer, as zsRE's edits and many people's corrections are.
        seed: seeds the statement, question and unusual-answer choices.

    Returns:
        A ``Dataset`` with columns ``edit`` (the edit as JSON, see :func:`edits_from_column`), ``edit_text``,
        ``query``, ``answer`` (the bare answer, for answer-match metrics), ``response`` (the text to train
        on) and ``kind``.
    """
    examples = _check_examples(examples)
    unknown = [kind for kind in kinds if kind not in IN_SCOPE_KINDS]
    if unknown:
        raise ValueError(f"unknown in-scope kinds {unknown}; expected some of {IN_SCOPE_KINDS}")
    if not 0.0 <= statement_fraction <= 1.0:
        raise ValueError(f"statement_fraction must be in [0, 1], got {statement_fraction}")
    if answer_style not in ANSWER_STYLES:
        raise ValueError(f"answer_style must be one of {ANSWER_STYLES}, got {answer_style!r}")
    if not 0.0 <= question_fraction <= 1.0:
        raise ValueError(f"question_fraction must be in [0, 1], got {question_fraction}")
    examples = with_unusual_targets(examples, unusual_target_fraction, seed)
    respond = {"voice": response_in_voice, "answer_first": response_answer_first}.get(answer_style)
    rng = random.Random(f"counterfactual-pairs:{seed}")
    # A separate stream, so turning question edits on does not change the statement choices.
    question_rng = random.Random(f"counterfactual-pairs-questions:{seed}")
    columns = ("edit", "edit_text", "query", "answer", "response", "kind")
    rows: dict[str, list] = {name: [] for name in columns}
    for original in examples:
        example = _maybe_statement(original, rng, statement_fraction)
        if example is original:
            example = _maybe_question(original, question_rng, question_fraction)
        sentence = _answer_sentence(original)
        edit_json = json.dumps(example.edit.to_dict(), sort_keys=True)
        items = [(query.text, query.answer, query.kind) for query in example.in_scope if query.kind in kinds]
        if include_portability and not example.companion_edits:
            items += [(question.text, question.answer, "portability") for question in example.portability]
        for query, answer, kind in items:
            rows["edit"].append(edit_json)
            rows["edit_text"].append(example.edit.text)
            rows["query"].append(query)
            rows["answer"].append(answer)
            rows["response"].append(respond(query, answer, kind, sentence) if respond else answer)
            rows["kind"].append(kind)
    logger.info("Counterfactual pairs: %d rows from %d examples", len(rows["query"]), len(examples))
    return Dataset.from_dict(rows, features=Features({name: Value("string") for name in rows}))


def edits_from_column(values: Sequence[str]) -> list[Edit]:
    """The :class:`~serac.edits.Edit` objects of a ``counterfactual_pairs`` ``edit`` column."""
    return [Edit.from_dict(json.loads(value)) for value in values]
