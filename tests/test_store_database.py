"""The edit store on a database: durable writes, several stores (and processes) sharing one database."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from serac import Edit
from serac.store import EditStore, EditStoreConfig, EditStoreError, UnknownEditError

from .test_store_defects import OtherEmbedder

REPO = Path(__file__).resolve().parent.parent
SPORT = Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")
TENNIS = Edit(prompt="{} plays the sport of", subject="LeBron James", target="tennis")
CITIZEN = Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")
_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'edits.db'}"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"store_{os.getpid()}_{next(_names)}")


def open_store(url, **config):
    return EditStore(OtherEmbedder(), EditStoreConfig(sync_interval_s=0.0, **config), url=url)


def test_edits_survive_reopening_with_ids_and_counter(url):
    store = open_store(url)
    ids = store.add([SPORT, CITIZEN])
    store.remove([ids[0]])
    reopened = open_store(url)
    assert reopened.items() == [(ids[1], CITIZEN)]
    assert reopened.search([CITIZEN.text], k=1)[0][0][0] == ids[1]
    assert reopened.add([SPORT]) == [2]  # ids are never reused


def test_two_stores_on_one_database_see_each_others_changes(url):
    first, second = open_store(url), open_store(url)
    (sport,) = first.add([SPORT])
    assert second.get(sport) == SPORT and len(second) == 1
    (tennis,) = second.add([TENNIS])  # supersedes the first store's edit of the same prompt
    assert first.items() == [(tennis, TENNIS)]
    assert first.search([TENNIS.text], k=5)[0] == [(tennis, pytest.approx(1.0, abs=1e-4))]
    (citizen,) = first.add([CITIZEN])
    second.remove([citizen])  # known to the database, not yet seen by this store: still removable
    assert len(first) == 1 and citizen not in first
    with pytest.raises(UnknownEditError):
        second.remove([citizen, tennis])
    assert [edit_id for edit_id, _ in first.items()] == [tennis]


def test_a_shared_store_is_seen_within_the_sync_interval(url):
    writer = open_store(url)
    reader = EditStore(OtherEmbedder(), EditStoreConfig(sync_interval_s=0.2), url=url)
    assert len(reader) == 0
    writer.add([SPORT])
    deadline = time.monotonic() + 0.2 + 0.5
    while len(reader) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_database_built_with_another_embedder_is_refused(url, embedder):
    open_store(url).add([SPORT])
    with pytest.raises(EditStoreError, match="384-d|embedder"):
        EditStore(embedder, url=url)


def test_a_snapshot_fills_a_new_database_once(url, tmp_path):
    memory = EditStore(OtherEmbedder())
    ids = memory.add([SPORT, CITIZEN])
    path = memory.save_pretrained(tmp_path / "snapshot.safetensors")
    store = EditStore.from_pretrained(path, OtherEmbedder(), url=url)
    assert store.items() == memory.items()
    assert open_store(url).items() == memory.items()
    with pytest.raises(EditStoreError, match="already holds"):
        EditStore.from_pretrained(path, OtherEmbedder(), url=url)
    assert store.add([TENNIS]) == [ids[-1] + 1]


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from serac.edits import Edit
    from serac.store import EditStore
    from tests.test_store_defects import OtherEmbedder

    store = EditStore(OtherEmbedder(), url={url!r})
    for i in range(100000):
        ids = store.add([Edit(prompt=f"Who wrote book {{i}}?", target=f"author {{i}}")])
        print("added", ids[0], flush=True)
        if i % 3 == 2:
            store.remove([ids[0] - 1])
            print("removed", ids[0] - 1, flush=True)
    """
)


def test_a_killed_writer_loses_no_acknowledged_edit(url):
    open_store(url)  # create the tables before the child starts writing
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(repo=str(REPO), url=url)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    added, removed = set(), set()
    try:
        for line in child.stdout:
            op, edit_id = line.split()
            (added if op == "added" else removed).add(int(edit_id))
            if len(added) >= 40:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    for line in child.stdout.read().splitlines():  # acknowledged before the kill, read after it
        op, edit_id = line.split()
        (added if op == "added" else removed).add(int(edit_id))
    store = open_store(url)
    held = {edit_id for edit_id, _ in store.items()}
    assert added - removed <= held  # nothing acknowledged is lost
    assert held <= added | (set(range(max(added) + 2)) - removed)  # nothing removed comes back
    assert len(store.search(["Who wrote book 3?"], k=3)[0]) == 3


def test_a_large_store_serves_at_once_and_moves_to_ivf_in_the_background(tmp_path):
    url = f"sqlite:///{tmp_path / 'edits.db'}"
    edits = [Edit(prompt=f"Who owns shop number {i}?", target=f"owner {i}") for i in range(300)]
    ids = open_store(url).add(edits)
    store = open_store(url, exact_max_size=100)
    store.remove(ids[:10])  # changes while the IVF index is being built reach it too
    (extra,) = store.add([Edit(prompt="Who owns the corner shop?", target="Ann")])
    assert store.search([edits[50].text], k=1)[0][0][0] == ids[50]
    assert store.wait_until_indexed(timeout=60)
    assert store.index_kind == "ivf" and store._index.ntotal == len(store) == 291
    assert store.search([edits[50].text], k=1)[0][0][0] == ids[50]
    assert store.search(["Who owns the corner shop? Ann"], k=1)[0][0][0] == extra
    assert all(hit[0] not in ids[:10] for hit in store.search([edits[5].text], k=20)[0])


def test_an_editor_folder_opened_on_a_database_keeps_its_edits_there(
    url, tiny_llama, char_tokenizer, embedder
):
    from serac.modeling import EditableModel

    from .test_store_defects import FIXTURE_EDITOR

    model = EditableModel.from_pretrained(
        tiny_llama, FIXTURE_EDITOR, tokenizer=char_tokenizer, embedder=embedder, store=url
    )
    assert [edit_id for edit_id, _ in model.edits] == [0, 2]  # filled from the saved snapshot
    (sport,) = model.edit([SPORT])
    model.remove_edits([0])
    again = EditableModel.from_pretrained(
        tiny_llama, FIXTURE_EDITOR, tokenizer=char_tokenizer, embedder=embedder, store=url
    )
    assert [edit_id for edit_id, _ in again.edits] == [2, sport]  # the database, not the snapshot
    assert EditableModel(
        tiny_llama, char_tokenizer, scope_classifier=again.scope_classifier,
        counterfactual_model=again.counterfactual_model, store=EditStore(embedder, url=url),
    ).edits == again.edits  # fmt: skip
