import os
import threading

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from serac import Edit
from serac.store import EditStore, EditStoreConfig, EditStoreError

SPORT = Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")
CITIZEN = Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")
PM = Edit.from_statement("Boris Johnson is the prime minister of the UK.")


@pytest.fixture()
def store(embedder):
    return EditStore(embedder)


def test_add_returns_stable_ids_and_search_finds_the_right_edit(store):
    ids = store.add([SPORT, CITIZEN, PM])
    assert ids == [0, 1, 2]
    hits = store.search(["Which country is Ellie Kemper a citizen of?", "Who leads the UK government?"], k=1)
    assert hits[0][0][0] == 1
    assert hits[1][0][0] == 2
    assert 0.0 < hits[0][0][1] <= 1.0001
    assert store.get(0) == SPORT
    assert [edit_id for edit_id, _ in store.items()] == [0, 1, 2]


def test_reediting_a_prompt_supersedes_the_older_edit(store):
    (first,) = store.add([SPORT])
    (second,) = store.add([Edit(prompt="{} plays the sport of", subject="LeBron James", target="tennis")])
    assert second != first
    assert first not in store and len(store) == 1
    assert store.get(second).target == "tennis"
    assert store.search(["LeBron James plays the sport of"], k=5)[0][0][0] == second


def test_duplicate_prompts_within_one_call_keep_the_last(store):
    ids = store.add([Edit(prompt="Who?", target="A"), Edit(prompt="who", target="B")])
    assert len(store) == 1
    assert store.get(ids[1]).target == "B"
    assert ids[0] == ids[1]  # both name the edit now stored for that prompt


def test_remove_and_update(store):
    ids = store.add([SPORT, CITIZEN])
    store.remove([ids[0]])
    assert len(store) == 1 and ids[0] not in store
    assert all(hit[0] != ids[0] for hit in store.search(["LeBron James plays the sport of"], k=5)[0])
    store.update(ids[1], Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Peru"))
    assert store.get(ids[1]).target == "Peru"
    assert store.add([SPORT]) == [2]  # ids are never reused


def test_bad_input_changes_nothing(store):
    ids = store.add([SPORT])
    with pytest.raises(KeyError):
        store.remove([ids[0], 999])
    assert len(store) == 1
    with pytest.raises(TypeError):
        store.remove(["0"])
    with pytest.raises(TypeError):
        store.add(["not an edit"])
    assert len(store) == 1
    with pytest.raises(ValueError):
        store.search(["x"], k=0)
    with pytest.raises(ValueError):
        store.search(np.zeros((1, 7), dtype=np.float32))


def test_empty_store_search(store):
    assert store.search(["anything"], k=3) == [[]]


def test_moves_to_ivf_past_exact_limit_and_keeps_finding_edits(embedder):
    store = EditStore(embedder, EditStoreConfig(exact_max_size=200, ivf_nprobe=64))
    edits = [
        Edit(prompt=f"What is the code name of project number {i}?", target=f"name{i}") for i in range(400)
    ]
    ids = store.add(edits)
    assert store.index_kind == "ivf"
    hits = store.search([edits[i].text for i in range(0, 400, 40)], k=1)
    assert [h[0][0] for h in hits] == [ids[i] for i in range(0, 400, 40)]
    store.remove(ids[:50])
    assert len(store) == 350 and store._index.ntotal == 350
    assert all(hit[0] >= 50 for hit in store.search([edits[10].text], k=5)[0])


def test_save_load_round_trip(store, embedder, tmp_path):
    ids = store.add([SPORT, CITIZEN, PM])
    store.remove([ids[1]])
    path = store.save_pretrained(tmp_path / "store.safetensors")
    loaded = EditStore.from_pretrained(path, embedder)
    assert loaded.items() == store.items()
    assert loaded.add([CITIZEN]) == [3]  # the id counter survives
    query = ["Who leads the UK government?"]
    assert loaded.search(query, k=2)[0][0] == store.search(query, k=2)[0][0]


def test_crash_during_save_keeps_the_previous_file(store, embedder, tmp_path, monkeypatch):
    store.add([SPORT])
    path = store.save_pretrained(tmp_path / "store.safetensors")
    before = path.read_bytes()
    store.add([CITIZEN, PM])

    def crash(*args, **kwargs):
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save_pretrained(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [e for _, e in EditStore.from_pretrained(path, embedder).items()] == [SPORT]
    assert [p.name for p in tmp_path.iterdir()] == ["store.safetensors"]  # no temporary left behind


def test_truncated_corrupt_and_incompatible_files_raise(store, embedder, tmp_path):
    store.add([SPORT, CITIZEN])
    path = store.save_pretrained(tmp_path / "store.safetensors")
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(EditStoreError):
        EditStore.from_pretrained(truncated, embedder)
    flipped = bytearray(raw)
    flipped[-10] ^= 0xFF
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(EditStoreError, match="checksum"):
        EditStore.from_pretrained(corrupt, embedder)
    tensors = st_load(raw)
    from serac.store.snapshot import read_metadata

    metadata = read_metadata(raw)
    metadata["format_version"] = "999"
    future = tmp_path / "future.safetensors"
    future.write_bytes(st_save(tensors, metadata=metadata))
    with pytest.raises(EditStoreError, match="version"):
        EditStore.from_pretrained(future, embedder)
    with pytest.raises(FileNotFoundError):
        EditStore.from_pretrained(tmp_path / "missing.safetensors", embedder)


def test_concurrent_adds_and_searches(store):
    errors = []

    def writer():
        try:
            for i in range(20):
                ids = store.add([Edit(prompt=f"Who owns shop {i}?", target=f"owner {i}")])
                if i % 2:
                    store.remove(ids)
        except Exception as error:  # pragma: no cover - the assertion below reports it
            errors.append(error)

    thread = threading.Thread(target=writer)
    thread.start()
    for _ in range(20):
        for row in store.search(["Who owns shop 3?"], k=3):
            for edit_id, _ in row:
                assert edit_id >= 0
    thread.join()
    assert not errors
    assert len(store) == 10
