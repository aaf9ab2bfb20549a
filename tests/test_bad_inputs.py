"""Bad input gets a clear error before anything changes, and the library never loses an edit by itself.

Every test asserts the error (type and what its message names) and that nothing changed: the stored edits,
the files on disk, the database's tables. Sections: superseding and history, edits, ids, store locations,
saved folders, generate()/forward() arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save as safetensors_save
from transformers import StoppingCriteria, StoppingCriteriaList

from serac import Edit
from serac.counterfactual import CounterfactualModel
from serac.memory import EditMemory
from serac.modeling import EditableModel
from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig
from serac.store import EditStore, EditStoreError, UnknownEditError

from .conftest import make_tiny_t5
from .test_store_defects import OtherEmbedder

FIXTURE_EDITOR = Path(__file__).parent / "fixtures" / "editor_v0_1_0"
SPORT = Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")
TENNIS = Edit(prompt="{} plays the sport of", subject="LeBron James", target="tennis")
CITIZEN = Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")
MAYOR = Edit(prompt="Who is the mayor of {}?", subject="Springfield", target="Joe Quimby")
MAYOR_AGAIN = Edit(prompt="Which person is the mayor of {}?", subject="Springfield", target="Lisa Simpson")


@pytest.fixture(scope="module")
def counterfactual(char_tokenizer):
    return CounterfactualModel(make_tiny_t5(char_tokenizer, seed=2), char_tokenizer)


def scope_classifier() -> EmbeddingScopeClassifier:
    return EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))


def make_memory(counterfactual, embedder, store=None) -> EditMemory:
    return EditMemory(scope_classifier(), counterfactual, store if store is not None else EditStore(embedder))


def make_model(base, tokenizer, counterfactual, embedder) -> EditableModel:
    return EditableModel(base, tokenizer, make_memory(counterfactual, embedder))


def files_under(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the SHA-256 of its bytes: compared before and after a failed call."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def sqlite_tables(path: Path) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return sorted(
            row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        )


# ============================================================== superseding never loses an edit
def test_an_edit_of_another_relation_about_the_same_subject_is_not_retired(counterfactual, embedder):
    memory = make_memory(counterfactual, embedder)
    (sport,) = memory.edit(Edit(prompt="{} plays the sport of", subject="Roger Federer", target="golf"))
    result = memory.edit(Edit(prompt="{} was born in the city of", subject="Roger Federer", target="Oslo"))
    assert [edit_id for edit_id, _ in memory.edits] == [sport, result[0]]
    assert result.retired == [] and memory.retired() == []


def test_distinct_edits_stored_in_one_call_are_all_kept(counterfactual, embedder):
    memory = make_memory(counterfactual, embedder)
    edits = [Edit(prompt=f"Who is the mayor of Town{n}?", target=f"Person {n}") for n in range(1000)]
    ids = memory.edit(edits)
    assert len(memory) == 1000 and sorted(ids) == [edit_id for edit_id, _ in memory.edits]
    assert ids.retired == [] and memory.retired() == []


def test_a_retired_edit_is_kept_in_history_reported_and_restorable(counterfactual, embedder, caplog):
    memory = make_memory(counterfactual, embedder)
    (older,) = memory.edit(MAYOR)
    with caplog.at_level(logging.INFO, logger="serac"):
        result = memory.edit(MAYOR_AGAIN)
    (newer,) = result
    assert result.retired == [older]
    assert [record.levelname for record in caplog.records if "retired" in record.getMessage()] == ["WARNING"]
    assert memory.edits == [(newer, MAYOR_AGAIN)]
    assert memory.retired() == [(older, MAYOR, newer)]
    # Restoring something that is not retired changes nothing.
    with pytest.raises(KeyError, match="12345"):
        memory.restore([older, 12345])
    assert memory.edits == [(newer, MAYOR_AGAIN)] and memory.retired() == [(older, MAYOR, newer)]
    memory.restore([older])
    assert memory.edits == [(older, MAYOR), (newer, MAYOR_AGAIN)] and memory.retired() == []
    assert memory.route(["Who is the mayor of Springfield?"])[0].in_scope


def test_reediting_the_same_prompt_keeps_the_older_edit_in_history(embedder, tmp_path):
    url = f"sqlite:///{tmp_path / 'edits.db'}"
    store = EditStore(OtherEmbedder(), url=url)
    (first,) = store.add([SPORT])
    result = store.add([TENNIS])
    assert result.retired == [first]
    assert store.items() == [(result[0], TENNIS)] and store.retired() == [(first, SPORT, result[0])]
    # The history is in the database: another process sees it, and a snapshot carries it.
    reopened = EditStore(OtherEmbedder(), url=url)
    assert reopened.retired() == [(first, SPORT, result[0])]
    path = reopened.save_pretrained(tmp_path / "store.safetensors")
    loaded = EditStore.from_pretrained(path, OtherEmbedder())
    assert loaded.items() == store.items() and loaded.retired() == store.retired()
    # Restoring the older answer retires the newer one of the same prompt in its place: an undo.
    swapped = loaded.restore([first])
    assert swapped.retired == [result[0]]
    assert loaded.items() == [(first, SPORT)] and loaded.retired() == [(result[0], TENNIS, first)]
    assert loaded.search([SPORT.text], k=1)[0][0][0] == first


def test_an_earlier_edit_of_one_prompt_in_the_same_call_is_kept_in_history(embedder):
    store = EditStore(OtherEmbedder())
    ids = store.add([SPORT, CITIZEN, TENNIS, TENNIS])
    assert ids == [2, 1, 2, 2] and ids.retired == [0]
    assert store.items() == [(1, CITIZEN), (2, TENNIS)] and store.retired() == [(0, SPORT, 2)]


def test_edit_returns_only_ids_of_live_edits(counterfactual, embedder):
    memory = make_memory(counterfactual, embedder)
    ids = memory.edit([MAYOR, MAYOR_AGAIN])
    assert all(edit_id in memory.store for edit_id in ids)
    assert ids.retired == [0] and ids == [1, 1]
    memory.remove_edits(ids)
    assert len(memory) == 0


def test_a_database_written_before_the_history_opens_and_keeps_history(tmp_path):
    path = tmp_path / "edits.db"
    (sport,) = EditStore(OtherEmbedder(), url=path).add([SPORT])
    with sqlite3.connect(path) as connection:  # the tables of format 1, as serac 0.2 wrote them
        connection.execute("DROP TABLE serac_retired")
    store = EditStore(OtherEmbedder(), url=path)
    assert store.items() == [(sport, SPORT)]
    (tennis,) = store.add([TENNIS])
    assert store.retired() == [(sport, SPORT, tennis)]
    assert "serac_retired" in sqlite_tables(path)


def v2_snapshot(store: EditStore) -> bytes:
    """A snapshot of format 2 (serac 0.2), with no history, from a store's live edits."""
    from serac.store.snapshot import snapshot_digest

    items = store.items()
    ids = np.asarray([edit_id for edit_id, _ in items], dtype=np.int64)
    tensors = {
        "ids": ids,
        "embeddings": store.encode([edit.text for _, edit in items]),
        "edits": np.frombuffer(json.dumps([edit.to_dict() for _, edit in items]).encode(), dtype=np.uint8),
        "embedder_probe": store._probe,
    }
    metadata = {
        "format": "serac.edit_store",
        "format_version": "2",
        "serac_version": "0.2.0",
        "config": json.dumps({"embedder_name_or_path": None}),
        "dimension": str(store.dimension),
        "next_id": str(int(ids.max()) + 1),
        "size": str(len(items)),
    }
    metadata["sha256"] = snapshot_digest(metadata, tensors)
    return safetensors_save(tensors, metadata=metadata)


def test_snapshots_and_folders_of_earlier_formats_still_load(char_tokenizer, tiny_llama, embedder, tmp_path):
    store = EditStore(OtherEmbedder())
    store.add([SPORT, CITIZEN])
    (tmp_path / "v2.safetensors").write_bytes(v2_snapshot(store))
    loaded = EditStore.from_pretrained(tmp_path / "v2.safetensors", OtherEmbedder())
    assert loaded.items() == store.items() and loaded.retired() == []
    model = EditableModel.from_pretrained(
        tiny_llama, FIXTURE_EDITOR, tokenizer=char_tokenizer, embedder=embedder
    )
    assert [edit_id for edit_id, _ in model.edits] == [0, 2] and model.retired() == []


# ============================================================== edits
@pytest.mark.parametrize(
    ("prompt", "subject"),
    [("Who owns the Bobcat company?", "Bob"), ("Where is Parisville?", "Paris"), ("Is it the ToBob?", "Bob")],
)
def test_a_subject_inside_another_word_is_refused(prompt, subject):
    with pytest.raises(ValueError, match=f"{subject!r}.*whole word"):
        Edit(prompt=prompt, subject=subject, target="x")


def test_a_subject_named_as_whole_words_is_accepted():
    assert Edit(prompt="Where does Bob's cat live?", subject="Bob", target="Oslo").subject == "Bob"
    assert Edit(prompt="Who wrote C++?", subject="C++", target="Bjarne Stroustrup").subject == "C++"


@pytest.mark.parametrize("data", [["prompt", "target"], "prompt", 3, None])
def test_edit_from_dict_of_something_else_than_a_mapping_is_a_type_error(data):
    with pytest.raises(TypeError, match="Edit.from_dict.*mapping"):
        Edit.from_dict(data)


# ============================================================== ids
@pytest.mark.parametrize("bad_id", [2**63, 2**64 + 5, -1])
def test_an_id_outside_the_id_range_is_an_unknown_id(counterfactual, embedder, tmp_path, bad_id):
    memory = make_memory(counterfactual, embedder, EditStore(embedder, url=tmp_path / "edits.db"))
    ids = memory.edit([SPORT, CITIZEN])
    with pytest.raises(UnknownEditError, match=str(bad_id)):
        memory.remove_edits([ids[0], bad_id])
    assert [edit_id for edit_id, _ in memory.edits] == ids


def test_a_write_of_one_edit_embeds_once_and_still_finds_the_fact_it_supersedes(counterfactual, embedder):
    memory = make_memory(counterfactual, embedder)
    (older,) = memory.edit(MAYOR)
    calls = []
    encode = embedder.encode

    def counting_encode(texts, *args, **kwargs):
        calls.append(list(texts))
        return encode(texts, *args, **kwargs)

    embedder.encode = counting_encode
    try:
        result = memory.edit(MAYOR_AGAIN)
    finally:
        del embedder.encode
    # One pass of the embedder for the stored text and the query looked up for the same fact (the
    # classifier's own passes over candidates come after it).
    assert calls[0] == [MAYOR_AGAIN.text, MAYOR_AGAIN.query]
    assert sum(MAYOR_AGAIN.query in texts or MAYOR_AGAIN.text in texts for texts in calls) == 1
    assert result.retired == [older] and memory.edits == [(result[0], MAYOR_AGAIN)]
    (hit,) = memory.store.search(memory.store.encode([MAYOR_AGAIN.text]), k=1)
    assert hit[0][0] == result[0] and hit[0][1] > 0.999  # stored under its text's own embedding


def test_removing_a_retired_id_says_it_was_retired(counterfactual, embedder):
    memory = make_memory(counterfactual, embedder)
    (older,) = memory.edit(MAYOR)
    (newer,) = memory.edit(MAYOR_AGAIN)
    with pytest.raises(UnknownEditError, match=f"retired.*{newer}.*restore"):
        memory.remove_edits([older])
    assert memory.edits == [(newer, MAYOR_AGAIN)]


# ============================================================== store locations
@pytest.mark.parametrize(
    "location",
    ["sqlite:/x.db", "sqlite:x.db", "postgresql:/db", "file:/x.safetensors", "sqlite://x.db"],
)
def test_a_location_that_looks_like_a_url_but_is_not_one_is_refused(location, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(repr(location))) as raised:
        EditStore.open(location, embedder=OtherEmbedder())
    assert "sqlite:///" in str(raised.value)  # says what a valid URL looks like
    assert list(tmp_path.iterdir()) == []


def test_an_empty_store_location_is_refused(counterfactual, embedder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        EditStore.open("", embedder=OtherEmbedder())
    with pytest.raises(ValueError, match="empty"):
        make_memory(counterfactual, embedder, store="")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_as_store_path_names_the_directory(tmp_path):
    folder = tmp_path / "stores"
    folder.mkdir()
    for location in (folder, str(folder), f"sqlite:///{folder}"):
        with pytest.raises(IsADirectoryError, match=str(folder)):
            EditStore.open(location, embedder=OtherEmbedder())
    assert list(folder.iterdir()) == []


def test_an_unwritable_store_path_names_the_path():
    # /proc refuses new files even to root, so this holds whoever runs the tests.
    path = Path("/proc/serac-test-edits.db")
    with pytest.raises(EditStoreError, match=f"{path}.*writ"):
        EditStore.open(path, embedder=OtherEmbedder())
    assert not path.exists()


def test_a_sqlite_file_with_a_foreign_table_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE serac_edits (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO serac_edits VALUES (1, 'not an edit')")
    connection.close()
    before = files_under(tmp_path)
    with pytest.raises(EditStoreError, match=f"{path}.*serac_edits"):
        EditStore(OtherEmbedder(), url=path)
    assert files_under(tmp_path) == before
    assert sqlite_tables(path) == ["serac_edits"]


def test_a_postgresql_database_with_a_foreign_table_is_refused_and_left_as_it_was(postgres):
    import sqlalchemy as sa

    url = postgres.create_database("foreign_tables")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE serac_edits (id INTEGER PRIMARY KEY, name TEXT)"))
    with pytest.raises(EditStoreError, match="serac_edits"):
        EditStore(OtherEmbedder(), url=url)
    assert sa.inspect(engine).get_table_names() == ["serac_edits"]
    engine.dispose()


def test_a_file_that_is_not_a_database_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 20)
    before = files_under(tmp_path)
    with pytest.raises(EditStoreError, match=str(path)):
        EditStore(OtherEmbedder(), url=path)
    assert files_under(tmp_path) == before


# ============================================================== saved folders
@pytest.fixture
def saved_folder(char_tokenizer, tiny_llama, counterfactual, embedder, tmp_path):
    model = make_model(tiny_llama, char_tokenizer, counterfactual, embedder)
    model.edit([SPORT, CITIZEN])
    folder = tmp_path / "editor"
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("broken", ["counterfactual weights", "edit store snapshot"])
def test_a_failed_load_leaves_a_new_database_untouched(broken, saved_folder, embedder, tmp_path):
    target = {
        "counterfactual weights": saved_folder / "counterfactual_model" / "model" / "model.safetensors",
        "edit store snapshot": saved_folder / "edit_store.safetensors",
    }[broken]
    target.write_bytes(target.read_bytes()[:200])
    database = tmp_path / "new" / "edits.db"
    with pytest.raises(Exception):  # noqa: B017 - what matters here is what the failure leaves behind
        EditMemory.from_pretrained(saved_folder, embedder=embedder, store=database)
    assert not database.parent.exists() or list(database.parent.iterdir()) == []


def test_a_deleted_counterfactual_model_folder_names_it(saved_folder, embedder):
    shutil.rmtree(saved_folder / "counterfactual_model")
    before = files_under(saved_folder)
    with pytest.raises(FileNotFoundError, match="counterfactual model.*counterfactual_model.*save"):
        EditMemory.from_pretrained(saved_folder, embedder=embedder)
    assert files_under(saved_folder) == before


def test_a_deleted_counterfactual_config_names_the_file(saved_folder, embedder):
    (saved_folder / "counterfactual_model" / "counterfactual_config.json").unlink()
    before = files_under(saved_folder)
    with pytest.raises(FileNotFoundError, match="counterfactual_config.json.*save"):
        EditMemory.from_pretrained(saved_folder, embedder=embedder)
    assert files_under(saved_folder) == before


@pytest.mark.parametrize(
    "part", ["scope_classifier/scope_config.json", "counterfactual_model/counterfactual_config.json"]
)
def test_a_truncated_part_config_names_the_file(part, saved_folder, embedder, tmp_path):
    path = saved_folder / part
    path.write_text(path.read_text()[:40])
    before = files_under(saved_folder)
    database = tmp_path / "edits.db"
    with pytest.raises(ValueError, match=f"{path}.*(truncated|JSON)"):
        EditMemory.from_pretrained(saved_folder, embedder=embedder, store=database)
    assert files_under(saved_folder) == before and not database.exists()


# ============================================================== generate() and forward() arguments
class Counting(StoppingCriteria):
    """Stops every row at once, and counts how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@pytest.fixture
def edited(char_tokenizer, tiny_llama, counterfactual, embedder):
    model = make_model(tiny_llama, char_tokenizer, counterfactual, embedder)
    model.edit([CITIZEN])
    return model


def spy_on_counterfactual(model, monkeypatch) -> list[dict]:
    calls: list[dict] = []
    original = model.counterfactual_model.generate

    def spy(edits, queries, **kwargs):
        calls.append(dict(kwargs))
        answers = original(edits, queries, **kwargs)
        calls[-1]["answers"] = answers
        return answers

    monkeypatch.setattr(model.counterfactual_model, "generate", spy)
    return calls


def test_an_edited_row_writes_at_most_an_answers_length_whatever_the_budget(
    edited, char_tokenizer, monkeypatch
):
    calls = spy_on_counterfactual(edited, monkeypatch)
    inputs = char_tokenizer([CITIZEN.prompt], return_tensors="pt")
    started = time.monotonic()
    edited.generate(**inputs, max_new_tokens=3000, do_sample=False)
    elapsed = time.monotonic() - started
    assert edited.last_routing[0].in_scope
    assert calls[0]["max_new_tokens"] <= edited.counterfactual_model.config.max_new_tokens
    assert elapsed < 10


def test_max_time_and_stopping_criteria_bound_the_counterfactual_model(edited, char_tokenizer, monkeypatch):
    calls = spy_on_counterfactual(edited, monkeypatch)
    inputs = char_tokenizer([CITIZEN.prompt], return_tensors="pt")
    edited.generate(**inputs, max_new_tokens=20, do_sample=False, max_time=30.0)
    assert 0 < calls[0]["max_time"] <= 30.0
    stop = Counting()
    output = edited.generate(
        **inputs, max_new_tokens=20, do_sample=False, stopping_criteria=StoppingCriteriaList([stop])
    )
    # The counterfactual model was stopped too: its answer is one token, not twenty.
    assert len(char_tokenizer(calls[1]["answers"][0], add_special_tokens=False)["input_ids"]) <= 1
    assert output.shape[1] == inputs["input_ids"].shape[1] + 1 and stop.calls == 1


def test_labels_of_the_wrong_shape_name_both_shapes(edited, char_tokenizer):
    inputs = char_tokenizer([CITIZEN.prompt], return_tensors="pt")
    edited.forward(**inputs)
    routing = edited.last_routing
    for labels in (inputs["input_ids"][:, :-3], inputs["input_ids"][0], torch.zeros(2, 5, dtype=torch.long)):
        shapes = rf"labels.*{re.escape(str(tuple(labels.shape)))}.*input_ids.*{re.escape(str(tuple(inputs['input_ids'].shape)))}"
        with pytest.raises(ValueError, match=shapes):
            edited.forward(**inputs, labels=labels)
    assert edited.last_routing == routing
    assert edited.edits == [(0, CITIZEN)]


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.uint8, torch.int32])
def test_input_ids_of_any_integer_dtype_give_the_same_tokens(edited, char_tokenizer, dtype):
    texts = [CITIZEN.prompt, "Why is the sky blue?"]
    inputs = char_tokenizer(texts, return_tensors="pt", padding=True)
    small = inputs["input_ids"].to(dtype)
    expected = edited.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(
        edited.generate(
            input_ids=small, attention_mask=inputs["attention_mask"], max_new_tokens=6, do_sample=False
        ),
        expected,
    )
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    reference = edited.forward(**inputs, labels=labels)
    output = edited.forward(input_ids=small, attention_mask=inputs["attention_mask"], labels=labels)
    assert torch.equal(output.logits, reference.logits) and torch.equal(output.loss, reference.loss)
