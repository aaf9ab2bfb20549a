"""What keeps the scope classifier local: subject match, last-sentence views, same-fact superseding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serac.counterfactual import CounterfactualModel
from serac.edits import Edit, mentions_subject
from serac.modeling import EditableModel
from serac.scope import (
    CrossEncoderScopeClassifier,
    ScopeClassifierConfig,
    last_sentence,
    load_scope_classifier,
)
from serac.store import EditStore
from tests.conftest import make_tiny_t5

#: Words that ask one relation; a pair is in scope when edit and query ask the same one.
RELATION_WORDS = {
    "design": ("designed", "architect"),
    "sport": ("sport", "play"),
    "birth": ("born", "birthplace", "into the world"),
    "prime minister": ("prime minister",),
}


def relation_of(text: str) -> str | None:
    lowered = text.lower()
    return next((name for name, words in RELATION_WORDS.items() if any(w in lowered for w in words)), None)


class RelationCrossEncoder:
    """Scores 0.95 when both texts ask the same relation, else 0.05; remembers every pair it scored."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def predict(self, pairs, **kwargs):
        pairs = list(pairs)
        self.pairs += pairs
        same = [relation_of(a) is not None and relation_of(a) == relation_of(b) for a, b in pairs]
        return np.where(same, 0.95, 0.05).astype(np.float32)


def classifier(**settings) -> CrossEncoderScopeClassifier:
    settings = {"threshold": 0.5, "top_k": 4, "retrieval_threshold": -1.0, **settings}
    config = ScopeClassifierConfig(**settings)
    return CrossEncoderScopeClassifier(RelationCrossEncoder(), config)


@pytest.mark.parametrize(
    ("subject", "text", "expected"),
    [
        ("Ellie Kemper", "Which country is Ellie Kemper a citizen of?", True),
        ("Ellie Kemper", "What is ellie kemper's citizenship?", True),
        ("Houston toad", "What's the threatened status of Houston toads?", True),
        ("Rudolf Těsnohlídek", "When did Rudolf Tesnohlidek die?", True),
        ("Ellie Kemper", "Which country is Ellie Kempner a citizen of?", False),
        ("Tovin Marsh", "Where was Tovin Marsk born?", False),
        ("Tovin Marsh", "Where was Tavin Marsh born?", False),
        ("Ellie Kemper", "Which country is Kemper a citizen of?", False),
        ("Ann", "Where was Anna born?", False),
        ("Life", "Life was originally aired on", True),
        ("Life", "Which network first aired Lifes?", True),
        ("Life", "Colin Brumby lost their life at", False),
        ("iPad", "Who makes the iPad?", True),
    ],
)
def test_mentions_subject(subject, text, expected):
    assert mentions_subject(subject, text) is expected


def test_queries_that_do_not_name_the_subject_never_reach_the_cross_encoder(embedder):
    store = EditStore(embedder)
    store.add(
        [
            Edit(prompt="{} plays the sport of", subject="LeBron James", target="football"),
            Edit.from_statement("Boris Johnson is the prime minister of the UK."),
        ]
    )
    near_duplicate = "What sport does LeBron Jamez play?"
    gated = classifier()
    decision = gated.classify([near_duplicate], store)[0]
    assert not decision.in_scope
    # The statement edit names no subject, so it is still scored; the prompt edit is not.
    assert {edit for edit, _ in gated.cross_encoder.pairs} == {
        "Boris Johnson is the prime minister of the UK."
    }
    # Without the subject match the same query is routed to the LeBron James edit.
    assert classifier(subject_match=False).classify([near_duplicate], store)[0].in_scope
    assert gated.classify(["What sport does LeBron James play?"], store)[0].in_scope


def test_a_question_after_unrelated_context_is_scored_by_its_last_sentence(embedder):
    assert last_sentence("Paris hosted the Games. The mother tongue of Danielle Darrieux is") == (
        "The mother tongue of Danielle Darrieux is"
    )
    assert last_sentence("Where was Tovin Marsh born?") == "Where was Tovin Marsh born?"
    store = EditStore(embedder)
    store.add([Edit(prompt="Where was {} born?", subject="Tovin Marsh", target="Oslo")])
    # The leading sentence asks another relation; only the last sentence asks the edited one.
    query = "I read about the sport of rowing yesterday and liked it. Where was Tovin Marsh born?"

    class LeadSensitive(RelationCrossEncoder):
        def predict(self, pairs, **kwargs):
            scores = super().predict(pairs)
            return np.where([b.startswith("I read") for _, b in pairs], 0.05, scores).astype(np.float32)

    for last, expected in ((True, True), (False, False)):
        config = ScopeClassifierConfig(threshold=0.5, retrieval_threshold=-1.0, last_sentence=last)
        decision = CrossEncoderScopeClassifier(LeadSensitive(), config).classify([query], store)[0]
        assert decision.in_scope is expected


def test_configs_saved_before_the_precision_settings_keep_their_behaviour(tmp_path):
    assert ScopeClassifierConfig().subject_match and ScopeClassifierConfig().last_sentence
    saved = json.loads(ScopeClassifierConfig(kind="embedding", threshold=0.7).to_json())
    del saved["subject_match"], saved["last_sentence"]
    (tmp_path / "scope_config.json").write_text(json.dumps(saved))
    config = load_scope_classifier(tmp_path).config
    assert not config.subject_match and not config.last_sentence


def test_same_fact_finds_older_edits_whose_queries_are_in_each_others_scope(embedder):
    store = EditStore(embedder)
    ids = store.add(
        [
            Edit(prompt="Who designed {}?", subject="Villa Tugendhat", target="Adolf Loos"),
            Edit(prompt="Where was {} born?", subject="Villa Tugendhat", target="Brno"),
            Edit(prompt="Who designed {}?", subject="Villa Savoye", target="Le Corbusier"),
            Edit(prompt="Which architect built {}?", subject="Villa Tugendhat", target="Mies van der Rohe"),
        ]
    )
    found = classifier().same_fact(ids, store)
    # Only the newest edit restates an older one's fact (same subject, same relation, other words).
    assert found == {ids[3]: [ids[0]]}


def test_the_newest_correction_of_a_fact_wins_for_every_phrasing(char_tokenizer, tiny_llama, embedder):
    counterfactual = CounterfactualModel(make_tiny_t5(char_tokenizer, seed=2), char_tokenizer)
    model = EditableModel(
        tiny_llama, char_tokenizer, scope_classifier=classifier(), counterfactual_model=counterfactual,
        store=EditStore(embedder),
    )  # fmt: skip
    first = model.edit([Edit(prompt="Who designed {}?", subject="Villa Tugendhat", target="Adolf Loos")])
    other = model.edit([Edit(prompt="Who designed {}?", subject="Villa Savoye", target="Le Corbusier")])
    newest = model.edit(
        [Edit(prompt="Which architect built {}?", subject="Villa Tugendhat", target="Mies van der Rohe")]
    )
    assert sorted(edit_id for edit_id, _ in model.edits) == sorted(other + newest)
    assert first[0] not in model.store
    for query in ("Who designed Villa Tugendhat?", "Which architect built Villa Tugendhat?"):
        decision = model.scope_classifier.classify([query], model.store)[0]
        assert decision.edit_id == newest[0]
    # Opting out keeps both, as before.
    kept = model.edit(
        [Edit(prompt="Who was the architect of {}?", subject="Villa Tugendhat", target="Someone")],
        supersede=False,
    )
    assert {newest[0], kept[0]} <= {edit_id for edit_id, _ in model.edits}


def test_the_store_finds_every_edit_whose_subject_a_text_names(embedder):
    store = EditStore(embedder)
    ids = store.add(
        [
            Edit(prompt="Where was {} born?", subject="Tovin Marsh", target="Oslo"),
            Edit(prompt="{} plays the sport of", subject="Tovin Marsh", target="rugby"),
            Edit(prompt="Where was {} born?", subject="Houston toad", target="Texas"),
            Edit.from_statement("Ada Rell plays the harp.", subject="Ada Rell"),
            Edit(prompt="Where was {} born?", subject="Tovin Marsk", target="Bergen"),
        ]
    )
    assert store.ids_named_in("Did tovin marsh ever play rugby?") == [ids[1], ids[0]]
    assert store.ids_named_in("Where do Houston toads live?") == [ids[2]]
    assert store.ids_named_in("What does Ada Rell play?") == [ids[3]]
    assert store.ids_named_in("Who is Tovin?") == []
    assert store.ids_named_in("Did tovin marsh ever play rugby?", limit=1) == [ids[1]]
    store.remove([ids[1]])
    assert store.ids_named_in("Did tovin marsh ever play rugby?") == [ids[0]]
    store.update(ids[0], Edit(prompt="Where was {} born?", subject="Ada Rell", target="Oslo"))
    assert store.ids_named_in("Where was Tovin Marsh born?") == []
    assert sorted(store.ids_named_in("Ada Rell")) == sorted([ids[0], ids[3]])


def test_an_edit_named_by_the_query_is_scored_however_far_it_is_in_embedding_space(embedder):
    store = EditStore(embedder)
    look_alike, named = store.add(
        [
            Edit(prompt="{}'s residence is", subject="Tovin Marsh", target="Oslo"),
            Edit(prompt="In which town did {} come into the world?", subject="Tovin Marsh", target="Oslo"),
        ]
    )
    query = "Tovin Marsh's birthplace is"
    # Another edit about the subject is the nearest; with top_k=1 only the subject index finds the right one.
    assert store.search([query], k=1)[0][0][0] == look_alike
    for subject_candidates, expected in ((0, None), (8, named)):
        decision = classifier(top_k=1, subject_candidates=subject_candidates).classify([query], store)[0]
        assert decision.edit_id == expected


def test_an_edit_without_a_subject_is_read_with_the_name_it_shares_with_the_query_masked(embedder):
    store = EditStore(embedder)
    store.add([Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")])
    gated = classifier()
    gated.classify(["Which country is Ellie Kemper a citizen of?"], store)
    assert gated.cross_encoder.pairs[0] == (
        "what is the country of citizenship of X ?",
        "which country is X a citizen of ?",
    )
    # Nothing shared, nothing masked.
    assert ScopeClassifierConfig().pair("What is the capital of France?", None, "Why is the sky blue?") == (
        "What is the capital of France?",
        "Why is the sky blue?",
    )
