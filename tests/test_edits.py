import pytest

from serac import Edit
from serac.edits import normalize_text


def test_prompt_edit_with_subject_fills_placeholder():
    edit = Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")
    assert edit.query == "LeBron James plays the sport of"
    assert edit.text == "LeBron James plays the sport of football"
    assert not edit.is_statement


def test_question_edit_and_statement_edit():
    question = Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")
    assert question.text == "What is the country of citizenship of Ellie Kemper? Croatia"
    statement = Edit.from_statement("  Boris Johnson is the prime minister of the UK. ")
    assert statement.is_statement
    assert statement.text == "Boris Johnson is the prime minister of the UK."
    assert statement.target is None


def test_key_ignores_case_spacing_and_final_punctuation():
    a = Edit(prompt="What is  the capital of France?", target="Lyon")
    b = Edit(prompt="what is the capital of france", target="Paris")
    assert a.key == b.key == normalize_text("What is the capital of France")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"prompt": "", "target": "x"}, ValueError),
        ({"prompt": "   ", "target": "x"}, ValueError),
        ({"prompt": "Who?", "target": ""}, ValueError),
        ({"prompt": 3, "target": "x"}, TypeError),
        ({"prompt": "Who?", "target": None}, ValueError),
        ({"prompt": "{} plays", "target": "golf"}, ValueError),  # placeholder without subject
        ({"prompt": "{} and {}", "subject": "A", "target": "b"}, ValueError),
        ({"prompt": "Who is Bob?", "subject": "Alice", "target": "b"}, ValueError),
        ({"statement": "?!"}, ValueError),  # no content
        ({"statement": "A is B.", "prompt": "p", "target": "t"}, ValueError),
        ({}, ValueError),
    ],
)
def test_bad_edits_raise(kwargs, error):
    with pytest.raises(error):
        Edit(**kwargs)


def test_dict_round_trip_and_unknown_keys():
    edit = Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")
    assert Edit.from_dict(edit.to_dict()) == edit
    with pytest.raises(KeyError):
        Edit.from_dict({"prompt": "p", "target": "t", "colour": "red"})


def test_edits_are_immutable():
    edit = Edit(prompt="Who?", target="Me")
    with pytest.raises(AttributeError):
        edit.target = "You"


@pytest.mark.parametrize(
    ("edit_text", "query", "name"),
    [
        # Lower-case particles between capitalized words belong to the name; a partial name left the rest of
        # it unmasked in one text ("what nationality was kees van X ?").
        ("What nationality was Kees van Beijnum?", "Where was Kees van Beijnum born?", "Kees van Beijnum"),
        (
            "Which lady gave birth to Constance of Toulouse?",
            "Who is Constance of Toulouse's mother?",
            "Constance of Toulouse",
        ),
        (
            "What is the country Giovanna d'Arco is from?",
            "Where does Giovanna d'Arco come from?",
            "Giovanna d'Arco",
        ),
        # A possessive ends the name: "Barros's" was no word of the query.
        (
            "What is Pedro García Barros's country of citizenship?",
            "Where is Pedro García Barros from?",
            "Pedro García Barros",
        ),
        # A particle is no name of its own, and a run ends at a word that is neither.
        ("Who is the mayor of Paris and of London?", "Who is the mayor of Paris?", "Paris"),
        ("What is the country of citizenship of Ellie Kemper?", "Is Ellie Kemper Croatian?", "Ellie Kemper"),
    ],
)
def test_the_shared_name_of_an_edit_without_subject_is_the_whole_name(edit_text, query, name):
    from serac.edits import mask_subject, shared_name

    assert shared_name(edit_text, query) == name
    assert "X" in mask_subject(name, edit_text).split() and "X" in mask_subject(name, query).split()
