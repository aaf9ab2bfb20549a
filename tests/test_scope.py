"""The scope classifier's view of an edit, and how its settings load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serac.edits import Edit
from serac.scope import CrossEncoderScopeClassifier, ScopeClassifierConfig, load_scope_classifier
from serac.store import EditStore


class RecordingCrossEncoder:
    """Scores 0.9 for every pair and remembers the pairs it was given."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def predict(self, pairs, **kwargs):
        self.pairs += list(pairs)
        return np.full(len(pairs), 0.9, dtype=np.float32)


EDITS = [
    Edit(prompt="{} plays the sport of", subject="LeBron James", target="football"),
    Edit.from_statement("Boris Johnson is the prime minister of the UK."),
]


@pytest.mark.parametrize(
    ("edit_input", "expected"),
    [
        ("query", {"LeBron James plays the sport of", "Boris Johnson is the prime minister of the UK."}),
        (
            "text",
            {"LeBron James plays the sport of football", "Boris Johnson is the prime minister of the UK."},
        ),
    ],
)
def test_cross_encoder_reads_the_configured_view_of_the_edit(embedder, edit_input, expected):
    store = EditStore(embedder)
    store.add(EDITS)
    recorder = RecordingCrossEncoder()
    config = ScopeClassifierConfig(
        threshold=0.5, top_k=2, retrieval_threshold=-1.0, edit_input=edit_input, mask_subject=False
    )
    classifier = CrossEncoderScopeClassifier(recorder, config)
    decisions = classifier.classify(["What sport does LeBron James play?"], store)
    assert decisions[0].in_scope and decisions[0].score == pytest.approx(0.9)
    assert {edit_text for edit_text, _ in recorder.pairs} == expected
    assert {query for _, query in recorder.pairs} == {"What sport does LeBron James play?"}


def test_edit_input_is_validated_and_older_configs_read_the_edit_with_its_target(tmp_path):
    with pytest.raises(ValueError, match="edit_input"):
        ScopeClassifierConfig(edit_input="answer")
    assert ScopeClassifierConfig().edit_input == "query"
    saved = json.loads(ScopeClassifierConfig(kind="embedding", threshold=0.7).to_json())
    del saved["edit_input"]  # as written before the setting existed
    (tmp_path / "scope_config.json").write_text(json.dumps(saved))
    assert load_scope_classifier(tmp_path).config.edit_input == "text"


def _logit(probability: float) -> float:
    return float(np.log(probability / (1 - probability)))


def test_the_masked_pairs_cosine_moves_the_cross_encoders_score(embedder):
    """Same cross-encoder probability for every pair: only the cosine of the masked pair tells them apart."""
    store = EditStore(embedder)
    store.add([Edit(prompt="Which university did {} attend?", subject="Ellie Kemper", target="Yale")])
    queries = ["Where did Ellie Kemper go to college?", "Who is Ellie Kemper married to?"]
    alone = CrossEncoderScopeClassifier(
        RecordingCrossEncoder(), ScopeClassifierConfig(threshold=0.9, retrieval_threshold=-1.0)
    )
    assert [decision.score for decision in alone.classify(queries, store)] == pytest.approx([0.9, 0.9])

    config = ScopeClassifierConfig(
        threshold=0.9, retrieval_threshold=-1.0, similarity_weight=3.0, similarity_center=0.6
    )
    classifier = CrossEncoderScopeClassifier(RecordingCrossEncoder(), config)
    decisions = classifier.classify(queries, store)
    for query, decision in zip(queries, decisions, strict=True):
        edit_text, query_text = config.pair(
            "Which university did Ellie Kemper attend?", "Ellie Kemper", query
        )
        assert "Ellie Kemper" not in edit_text + query_text
        cosine = float(np.dot(*store.encode([edit_text, query_text])))
        expected = 1 / (1 + np.exp(-(_logit(0.9) + 3.0 * (cosine - 0.6))))
        assert decision.score == pytest.approx(expected, abs=1e-5)
    college, married = decisions
    # The paraphrase of the edit's relation gains, the other relation of its subject loses and drops out.
    assert college.in_scope and college.score > 0.9
    assert not married.in_scope and married.score < 0.9


def test_similarity_settings_are_checked_and_older_classifiers_score_with_the_cross_encoder_alone(tmp_path):
    with pytest.raises(ValueError, match="similarity_weight"):
        ScopeClassifierConfig(similarity_weight=-1.0)
    with pytest.raises(ValueError, match="similarity_center"):
        ScopeClassifierConfig(similarity_center=1.5)
    saved = ScopeClassifierConfig(threshold=0.8).to_dict()
    del saved["similarity_weight"], saved["similarity_center"]
    assert ScopeClassifierConfig.from_dict(saved).similarity_weight == 0.0
