"""Edit datasets: schema, loaders (against hand-written fixtures), synthetic generator, mining, pairs."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from serac.data import (
    HARD_OUT_OF_SCOPE_KINDS,
    RELATIONS,
    EditExample,
    InScopeQuery,
    OutOfScopeQuery,
    PortabilityQuestion,
    SyntheticDataConfig,
    counterfactual_pairs,
    edits_from_column,
    examples_to_dataset,
    generate_synthetic_examples,
    load_counterfact,
    load_examples,
    load_examples_jsonl,
    load_mquake,
    load_zsre,
    mine_hard_negatives,
    save_examples_jsonl,
    scope_pairs,
)
from serac.edits import Edit, mentions_subject, normalize_text

FIXTURES = Path(__file__).parent / "fixtures"
MQUAKE = FIXTURES / "mquake_sample.json"
ZSRE = FIXTURES / "zsre_sample.json"
COUNTERFACT = FIXTURES / "counterfact_sample.json"


@pytest.fixture(scope="session")
def synthetic_examples() -> list[EditExample]:
    return generate_synthetic_examples(300, seed=7)


# ------------------------------------------------------------------------------------------- MQuAKE


def test_mquake_single_edit_case_parses_exactly():
    examples = load_mquake(MQUAKE, other_case_queries=0)
    assert [example.case_id for example in examples] == ["11", "13", "13", "15"]
    portugal = ("PT", "Portuguese Republic")
    expected = EditExample(
        edit=Edit(prompt="{} is a citizen of", subject="Tovin Marsh", target="Portugal"),
        in_scope=(
            InScopeQuery("Tovin Marsh is a citizen of", "Portugal", portugal, "edit"),
            InScopeQuery(
                "What is the country of citizenship of Tovin Marsh?", "Portugal", portugal, "question"
            ),
        ),
        out_of_scope=(
            OutOfScopeQuery("What is the capital of Canada?", "other_hop", "Ottawa", ("Ottawa, Ontario",)),
            OutOfScopeQuery("The capital of Canada is", "other_hop", "Ottawa", ("Ottawa, Ontario",)),
            OutOfScopeQuery("What is the capital of Portugal?", "other_hop", "Lisbon", ("Lisboa",)),
            OutOfScopeQuery("The capital of Portugal is", "other_hop", "Lisbon", ("Lisboa",)),
        ),
        portability=(
            PortabilityQuestion(
                "What is the capital of the country Tovin Marsh is a citizen of?", "Lisbon", ("Lisboa",)
            ),
            PortabilityQuestion(
                "Which city is the capital of the country of citizenship of Tovin Marsh?",
                "Lisbon",
                ("Lisboa",),
            ),
            PortabilityQuestion(
                "Tovin Marsh is a citizen of a country; what is its capital?", "Lisbon", ("Lisboa",)
            ),
        ),
        statement="Tovin Marsh is a citizen of Portugal.",
        source="mquake",
        case_id="11",
        relation="P27",
        true_answer="Canada",
    )
    assert examples[0] == expected


def test_mquake_multi_edit_case_has_companions_and_unknown_answers():
    creator, citizenship, headquarters = load_mquake(MQUAKE, other_case_queries=0)[1:]
    assert creator.edit == Edit(
        prompt="{} was created by", subject="The Glass Orchard", target="Ines Valcourt"
    )
    assert citizenship.edit == Edit(prompt="{} is a citizen of", subject="Ines Valcourt", target="Chile")
    assert creator.companion_edits == (citizenship.edit,)
    assert citizenship.companion_edits == (creator.edit,)
    assert [q.text for q in creator.portability] == [q.text for q in citizenship.portability]
    assert creator.portability[0].answers == ("Chile", "Republic of Chile", "CL")
    # The hop that the companion rewrite changes has no known answer without that rewrite.
    assert creator.out_of_scope == (
        OutOfScopeQuery(
            "What is the country of citizenship of Rupert Olande?",
            "other_hop",
            "Ireland",
            ("Republic of Ireland",),
        ),
        OutOfScopeQuery("Rupert Olande is a citizen of", "other_hop", "Ireland", ("Republic of Ireland",)),
        OutOfScopeQuery("What is the country of citizenship of Ines Valcourt?", "other_hop"),
        OutOfScopeQuery("Ines Valcourt is a citizen of", "other_hop"),
    )
    # Same relation (P27), other subject: a hard negative for the citizenship rewrite.
    assert citizenship.out_of_scope == (
        OutOfScopeQuery(
            "Who was The Glass Orchard created by?", "other_hop", "Rupert Olande", ("R. Olande",)
        ),
        OutOfScopeQuery("The Glass Orchard was created by", "other_hop", "Rupert Olande", ("R. Olande",)),
        OutOfScopeQuery(
            "What is the country of citizenship of Rupert Olande?",
            "same_relation_other_subject",
            "Ireland",
            ("Republic of Ireland",),
        ),
        OutOfScopeQuery(
            "Rupert Olande is a citizen of",
            "same_relation_other_subject",
            "Ireland",
            ("Republic of Ireland",),
        ),
    )
    # An edit in the middle of a three-hop chain: the hops around it are out of scope.
    assert [q.text for q in headquarters.in_scope] == [
        "The headquarters of Halvern Systems is located in",
        "Where is the headquarters of Halvern Systems located?",
    ]
    assert [(q.text, q.answer) for q in headquarters.out_of_scope] == [
        ("Who is the employer of Mara Quell?", "Halvern Systems"),
        ("Mara Quell is employed by", "Halvern Systems"),
        ("Which country is Tarsk located in?", "Norway"),
        ("Tarsk is located in the country of", "Norway"),
        ("Which country is Brill located in?", "Netherlands"),
        ("Brill is located in the country of", "Netherlands"),
    ]
    assert headquarters.statement == "The headquarters of Halvern Systems is located in Brill."


def test_mquake_other_case_queries_are_deterministic_and_labelled():
    first = load_mquake(MQUAKE, other_case_queries=6, seed=3)
    assert first == load_mquake(MQUAKE, other_case_queries=6, seed=3)
    same_case = load_mquake(MQUAKE, other_case_queries=0)[0]
    extra = first[0].out_of_scope[len(same_case.out_of_scope) :]
    # Case 11's rewrite (P27) gets the only other-case P27 hop as a hard negative, the rest unrelated.
    by_answer = {query.answer: query.kind for query in extra}
    assert by_answer == {
        "Ireland": "same_relation_other_subject",
        "Rupert Olande": "unrelated",
        "Halvern Systems": "unrelated",
        "Tarsk": "unrelated",
        "Norway": "unrelated",
        "Netherlands": "unrelated",
    }
    in_scope = {normalize_text(q.text) for q in first[0].in_scope}
    assert not in_scope & {normalize_text(q.text) for q in first[0].out_of_scope}


# ------------------------------------------------------------------------------------- zsRE, CounterFact


def test_zsre_parses_exactly():
    examples = load_zsre(ZSRE)
    assert examples[0] == EditExample(
        edit=Edit(
            prompt="Which architect designed Harwick Lodge?", subject="Harwick Lodge", target="Selma Ortiga"
        ),
        in_scope=(
            InScopeQuery("Which architect designed Harwick Lodge?", "Selma Ortiga", (), "edit"),
            InScopeQuery("Who was the architect of Harwick Lodge?", "Selma Ortiga", (), "paraphrase"),
        ),
        out_of_scope=(
            OutOfScopeQuery("how many moons does the planet neptune have?", "unrelated", "fourteen"),
        ),
        source="zsre",
        case_id="0",
        true_answer="Edmund Falk",
    )
    assert examples[1].true_answer == "Dunmore Rovers"
    # The subject is not in the question: it is dropped rather than failing validation.
    assert examples[2].edit == Edit(prompt="Which language did Tarvey write in?", target="Latvian")
    # An already punctuated question keeps its punctuation.
    assert examples[2].out_of_scope[0].text == "when did the first lighthouse open in the harbor?"


def test_counterfact_parses_exactly():
    examples = load_counterfact(COUNTERFACT)
    assert len(examples) == 2
    first = examples[0]
    assert first.edit == Edit(prompt="The mother tongue of {} is", subject="Lorcan Idris", target="Finnish")
    assert first.statement == "The mother tongue of Lorcan Idris is Finnish."
    assert [(q.text, q.kind) for q in first.in_scope] == [
        ("The mother tongue of Lorcan Idris is", "edit"),
        ("The rain kept falling on the tin roof all night. Lorcan Idris spoke the language", "paraphrase"),
        ("She closed the notebook and left. Lorcan Idris is a native speaker of", "paraphrase"),
        ("Lorcan Idris was born in", "generation"),
        ("Where Lorcan Idris grew up, people speak", "generation"),
    ]
    assert {q.answer for q in first.in_scope} == {"Finnish"}
    assert [(q.text, q.answer) for q in first.out_of_scope] == [
        ("The mother tongue of Gwen Arvel is", "Welsh"),
        ("Bryn Talfryn, a native", "Welsh"),
        ("The native language of Eluned Price is", "Welsh"),
        ("Aino Kettunen is a native speaker of", "Finnish"),
        ("The mother tongue of Veikko Rask is", "Finnish"),
    ]
    assert {q.kind for q in first.out_of_scope} == {"same_relation_other_subject"}
    assert (first.relation, first.true_answer, first.case_id) == ("P103", "Welsh", "0")
    assert examples[1].edit.query == "Velocetta, that was created in"


def test_malformed_records_raise_or_are_skipped(tmp_path):
    records = json.loads(ZSRE.read_text())
    records.insert(1, {"src": "Who built it?", "alt": ""})
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="record 1"):
        load_zsre(path)
    assert len(load_zsre(path, skip_invalid=True)) == 3
    with pytest.raises(FileNotFoundError):
        load_counterfact(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="record 0"):
        load_mquake(ZSRE)  # a zsRE file is not MQuAKE


def test_jsonl_round_trip_and_dispatch(tmp_path):
    examples = load_mquake(MQUAKE) + load_zsre(ZSRE) + load_counterfact(COUNTERFACT)
    path = save_examples_jsonl(examples, tmp_path / "examples.jsonl")
    assert load_examples_jsonl(path) == examples
    assert load_examples(f"jsonl:{path}") == examples
    assert load_examples(f"zsre:{ZSRE}") == load_zsre(ZSRE)
    assert len(load_examples("synthetic:5", seed=1)) == 5
    with pytest.raises(ValueError, match="unknown data kind"):
        load_examples(f"wikidata:{ZSRE}")
    with pytest.raises(ValueError, match="needs a path"):
        load_examples("mquake")


# ------------------------------------------------------------------------------------------- schema


def test_schema_validates_and_round_trips():
    edit = Edit(prompt="{} plays the", subject="Ada Rell", target="harp")
    with pytest.raises(ValueError, match="both in scope and out of scope"):
        EditExample(
            edit,
            in_scope=(InScopeQuery("Ada Rell plays the", "harp"),),
            out_of_scope=(OutOfScopeQuery("ada rell plays the?"),),
        )
    with pytest.raises(ValueError, match="kind"):
        OutOfScopeQuery("Who is Ada?", "rather_close")
    with pytest.raises(TypeError):
        EditExample("Ada Rell plays the harp")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        InScopeQuery("Ada Rell plays the", "harp", aliases="lyre")  # type: ignore[arg-type]
    example = load_mquake(MQUAKE)[1]
    assert EditExample.from_dict(example.to_dict()) == example
    statement = example.as_statement_edit()
    # The statement keeps the subject it names, so the scope classifier's subject match applies to it too.
    assert statement.edit == Edit.from_statement(
        "The Glass Orchard was created by Ines Valcourt.", subject="The Glass Orchard"
    )
    assert statement.in_scope[0] == InScopeQuery(
        "The Glass Orchard was created by", "Ines Valcourt", ("I. Valcourt",), "edit"
    )
    with pytest.raises(ValueError, match="no statement"):
        EditExample(edit).as_statement_edit()
    with pytest.raises(KeyError):
        EditExample.from_dict({**example.to_dict(), "notes": "x"})


def test_examples_to_dataset_keeps_every_field():
    examples = load_mquake(MQUAKE)
    dataset = examples_to_dataset(examples)
    assert len(dataset) == len(examples)
    rebuilt = [
        EditExample.from_dict({**row, "edit": {k: v for k, v in row["edit"].items() if v}}) for row in dataset
    ]
    for example, row in zip(examples, rebuilt, strict=True):
        assert row.edit == example.edit
        assert row.in_scope == example.in_scope and row.out_of_scope == example.out_of_scope


# ---------------------------------------------------------------------------------------- synthetic


def test_synthetic_generator_is_deterministic_for_a_seed():
    first = generate_synthetic_examples(60, seed=11)
    second = generate_synthetic_examples(60, seed=11)
    assert [e.to_dict() for e in first] == [e.to_dict() for e in second]
    other = generate_synthetic_examples(60, seed=12)
    assert [e.edit for e in other] != [e.edit for e in first]
    # A longer run starts with the same examples.
    assert generate_synthetic_examples(80, seed=11)[:60] == first


def test_synthetic_relations_have_enough_phrasings():
    assert len(RELATIONS) >= 25
    assert len({relation.name for relation in RELATIONS}) == len(RELATIONS)
    for relation in RELATIONS:
        assert len(set(relation.questions)) >= 4 and len(set(relation.clozes)) >= 4, relation.name
    names = {"citizenship", "sport", "employer", "capital", "native_language", "instrument", "music_genre",
             "birthplace", "headquarters", "author"}  # fmt: skip
    assert names <= {relation.name for relation in RELATIONS}


def test_synthetic_examples_have_every_kind_of_query(synthetic_examples):
    kinds = {q.kind for e in synthetic_examples for q in e.out_of_scope}
    assert kinds == {
        "same_subject_other_relation",
        "same_relation_other_subject",
        "near_duplicate_name",
        "unrelated",
    }
    assert {e.relation for e in synthetic_examples} == {relation.name for relation in RELATIONS}
    assert any(e.edit.is_statement for e in synthetic_examples)
    assert any(e.edit.prompt and e.edit.prompt.endswith("?") for e in synthetic_examples)
    for example in synthetic_examples:
        assert example.statement and example.true_answer and example.answer != example.true_answer
        yes_no = {q.answer: q.text for q in example.in_scope if q.kind == "yes_no"}
        assert set(yes_no) == {"yes", "no"}
        target = example.edit.target or example.in_scope[0].answer
        assert target in yes_no["yes"] and example.true_answer in yes_no["no"]
        subject = example.edit.subject
        for query in example.out_of_scope:
            if query.kind == "near_duplicate_name" and subject and subject in query.text:
                # The subject inside a longer name ("Gran Turismo 6"): one more word next to it.
                assert re.search(rf"\w+ {re.escape(subject)}|{re.escape(subject)} \w+", query.text), (
                    query.text
                )
            elif query.kind == "near_duplicate_name" and subject:
                twin = _one_edit_away(subject, query.text)
                assert twin, (subject, query.text)
            if query.kind == "same_subject_other_relation" and subject:
                assert subject in query.text


def _one_edit_away(name: str, text: str) -> bool:
    """Whether ``text`` mentions a name one letter or one token away from ``name``."""
    tokens = name.split(" ")
    words = [word.rstrip("?.,") for word in text.split(" ")]
    for start in range(len(words) - len(tokens) + 1):
        diffs = [(a, b) for a, b in zip(words[start : start + len(tokens)], tokens, strict=True) if a != b]
        if len(diffs) != 1:
            continue
        changed, original = diffs[0]
        one_letter = (
            len(changed) == len(original) and sum(a != b for a, b in zip(changed, original, strict=True)) == 1
        )
        if one_letter or len(tokens) > 1:
            return True
    return False


def test_synthetic_modified_names_put_a_word_before_the_subject_and_leave_the_other_queries_alone():
    from serac.data.synthetic import _NAME_MODIFIERS

    plain = generate_synthetic_examples(60, seed=3)
    modified = generate_synthetic_examples(60, seed=3, config=SyntheticDataConfig(modified_names=1))
    by_name = {relation.name: relation for relation in RELATIONS}
    added_in_all = 0
    for before, after in zip(plain, modified, strict=True):
        assert after.edit == before.edit and after.in_scope == before.in_scope
        added = [query for query in after.out_of_scope if query not in before.out_of_scope]
        assert [query for query in after.out_of_scope if query not in added] == list(before.out_of_scope)
        subject = before.edit.subject
        if subject is None:  # a statement that adjusts the name ("An Engine ...") names no subject to check
            continue
        if subject.split(" ")[0] in ("The", "A", "An"):
            assert not added  # "North The Silent Arrows" would name nothing
            continue
        assert len(added) == 1
        query = added[0]
        assert query.kind == "near_duplicate_name" and query.answer is None
        relation = by_name[before.relation]
        assert any(
            query.text == template.replace("{subject}", f"{word} {subject}")
            for template in (*relation.questions, *relation.clozes)
            for word in _NAME_MODIFIERS
        ), query.text
        # The subject match lets it through: the classifier has to tell the two apart.
        assert mentions_subject(subject, query.text)
        added_in_all += 1
    assert added_in_all >= 30
    with pytest.raises(ValueError, match="modified_names"):
        SyntheticDataConfig(modified_names=-1)


def test_synthetic_indirect_phrasings_are_in_scope_and_leave_the_other_queries_alone():
    plain = generate_synthetic_examples(60, seed=3)
    indirect = generate_synthetic_examples(60, seed=3, config=SyntheticDataConfig(indirect_phrasings=2))
    by_name = {relation.name: relation for relation in RELATIONS}
    for before, after in zip(plain, indirect, strict=True):
        added = [query for query in after.in_scope if query.kind == "generation"]
        assert [query for query in after.in_scope if query.kind != "generation"] == list(before.in_scope)
        assert after.edit == before.edit and after.out_of_scope == before.out_of_scope
        assert len(added) == 2 and len({query.text for query in added}) == 2
        new_answer = next(q.answer for q in before.in_scope if q.kind != "yes_no")
        templates = by_name[before.relation].indirect
        for query in added:
            assert query.answer == new_answer
            assert any(
                query.text == template.replace("{subject}", name)
                for template in templates
                for name in (
                    [before.edit.subject] if before.edit.subject else _names_in(query.text, template)
                )
            ), query.text
    with pytest.raises(ValueError, match="indirect_phrasings"):
        SyntheticDataConfig(indirect_phrasings=-1)


def _names_in(text: str, template: str) -> list[str]:
    """The name ``template`` was filled with to give ``text`` (empty if it was not)."""
    head, _, tail = template.partition("{subject}")
    if text.startswith(head) and text.endswith(tail):
        return [text[len(head) : len(text) - len(tail)]]
    return []


def test_synthetic_out_of_scope_facts_are_never_edited():
    # With every phrasing listed, an out-of-scope query of one example would show up as an in-scope
    # query of another if the generator ever edited a fact it also uses as a negative.
    examples = generate_synthetic_examples(400, seed=5, config=SyntheticDataConfig(in_scope_phrasings=100))
    in_scope = {normalize_text(q.text) for e in examples for q in e.in_scope}
    out_of_scope = {normalize_text(q.text) for e in examples for q in e.out_of_scope}
    assert not in_scope & out_of_scope


def test_synthetic_config_validation():
    with pytest.raises(ValueError):
        SyntheticDataConfig(statement_fraction=1.5)
    with pytest.raises(ValueError):
        SyntheticDataConfig(question_fraction=0.7, statement_fraction=0.5)
    with pytest.raises(ValueError, match="unknown relations"):
        SyntheticDataConfig(relations=("citizenship", "favourite_colour"))
    with pytest.raises(ValueError):
        generate_synthetic_examples(-1)
    only = generate_synthetic_examples(
        10, seed=0, config=SyntheticDataConfig(relations=("sport",), statement_fraction=0)
    )
    assert {e.relation for e in only} == {"sport"} and not any(e.edit.is_statement for e in only)


# ------------------------------------------------------------------------------------------- pairs


def test_scope_pairs_are_balanced_with_hard_negatives(synthetic_examples):
    pairs = scope_pairs(synthetic_examples, negatives_per_positive=1.0, hard_negative_fraction=0.5, seed=0)
    labels = np.array(pairs["label"])
    assert labels.sum() == len(labels) - labels.sum()
    negative_kinds = [kind for kind, label in zip(pairs["kind"], labels, strict=True) if label == 0]
    hard = sum(kind in HARD_OUT_OF_SCOPE_KINDS for kind in negative_kinds)
    assert 0.3 < hard / len(negative_kinds) <= 0.5
    assert "other_edit" in negative_kinds
    assert scope_pairs(synthetic_examples, seed=0)["query"] == pairs["query"]
    capped = scope_pairs(synthetic_examples, max_positives_per_edit=2, negatives_per_positive=2.0, seed=0)
    assert sum(capped["label"]) == 2 * len(synthetic_examples)
    assert len(capped) == 6 * len(synthetic_examples)
    with pytest.raises(ValueError):
        scope_pairs(synthetic_examples, hard_negative_fraction=2.0)


def test_scope_pairs_statement_form():
    examples = load_mquake(MQUAKE)
    pairs = scope_pairs(examples, statement_fraction=1.0, seed=0)
    assert set(pairs["edit_text"]) == {e.statement for e in examples}
    # A statement has no separate target: both views of the edit are the statement.
    assert pairs["edit_query"] == pairs["edit_text"]


def test_scope_pairs_carry_the_edit_with_and_without_its_target():
    examples = load_mquake(MQUAKE)
    pairs = scope_pairs(examples, statement_fraction=0.0, seed=0)
    by_query = {e.edit.query: e.edit.text for e in examples}
    assert set(pairs["edit_query"]) == set(by_query)
    for edit_query, edit_text in zip(pairs["edit_query"], pairs["edit_text"], strict=True):
        assert by_query[edit_query] == edit_text and edit_text != edit_query


def test_counterfactual_pairs(synthetic_examples):
    pairs = counterfactual_pairs(synthetic_examples, statement_fraction=0.5, seed=0)
    assert set(pairs["kind"]) == {"edit", "question", "cloze", "yes_no"}
    edits = edits_from_column(pairs["edit"])
    assert [edit.text for edit in edits] == pairs["edit_text"]
    assert any(edit.is_statement for edit in edits) and not all(edit.is_statement for edit in edits)
    yes_no = [answer for answer, kind in zip(pairs["answer"], pairs["kind"], strict=True) if kind == "yes_no"]
    assert set(yes_no) == {"yes", "no"}
    mquake = counterfactual_pairs(load_mquake(MQUAKE), statement_fraction=0.0)
    portability = [
        (q, a)
        for q, a, k in zip(mquake["query"], mquake["answer"], mquake["kind"], strict=True)
        if k == "portability"
    ]
    # Only single-edit cases: the counterfactual model sees one edit at a time.
    assert {answer for _, answer in portability} == {"Lisbon", "Netherlands"}
    assert len(portability) == 6
    with pytest.raises(ValueError):
        counterfactual_pairs(synthetic_examples, kinds=("rumour",))


# ------------------------------------------------------------------------------------------ mining


class _WordHashEmbedder:
    """A deterministic bag-of-words embedder: texts sharing words are close."""

    def encode(self, texts, **kwargs):
        vectors = np.zeros((len(texts), 256), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                vectors[row, zlib.crc32(word.encode()) % 256] += 1.0
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def test_mining_adds_nearest_queries_of_other_edits():
    person = Edit(prompt="{} is a citizen of", subject="Ada Rell", target="Chile")
    twin = Edit(prompt="{} is a citizen of", subject="Ada Rill", target="Peru")
    band = Edit(prompt="The band {} plays", subject="The Iron Owls", target="jazz")
    examples = [
        EditExample(person, in_scope=(InScopeQuery("Which country is Ada Rell a citizen of?", "Chile"),)),
        EditExample(twin, in_scope=(InScopeQuery("Which country is Ada Rill a citizen of?", "Peru"),)),
        EditExample(band, in_scope=(InScopeQuery("What kind of music does The Iron Owls play?", "jazz"),)),
        # Same prompt as the first edit: its queries are in scope for it, never negatives.
        EditExample(
            Edit(prompt="{} is a citizen of", subject="Ada Rell", target="Peru"),
            in_scope=(InScopeQuery("Ada Rell holds the citizenship of", "Peru"),),
        ),  # fmt: skip
    ]
    mined = mine_hard_negatives(examples, _WordHashEmbedder(), num_negatives=1, candidates_per_example=None)
    assert mined[0].out_of_scope == (
        OutOfScopeQuery("Which country is Ada Rill a citizen of?", "embedding_neighbor"),
    )
    assert mined[1].out_of_scope[0].text == "Which country is Ada Rell a citizen of?"
    assert all(q.kind == "embedding_neighbor" for e in mined for q in e.out_of_scope)
    assert mined[0].in_scope == examples[0].in_scope
    more = mine_hard_negatives(examples, _WordHashEmbedder(), num_negatives=5, candidates_per_example=None)
    assert "Ada Rell holds the citizenship of" not in {q.text for q in more[0].out_of_scope}
    assert len(more[2].out_of_scope) == 3
    with pytest.raises(ValueError):
        mine_hard_negatives(examples, _WordHashEmbedder(), num_negatives=-1)


@pytest.mark.slow
def test_mining_with_minilm_finds_the_near_duplicate_edit():
    from serac.offline import load_embedder

    examples = generate_synthetic_examples(12, seed=2)
    mined = mine_hard_negatives(examples, load_embedder(), num_negatives=2)
    for before, after in zip(examples, mined, strict=True):
        added = after.out_of_scope[len(before.out_of_scope) :]
        assert len(added) == 2
        own = {normalize_text(q.text) for q in before.in_scope}
        assert not own & {normalize_text(q.text) for q in added}
