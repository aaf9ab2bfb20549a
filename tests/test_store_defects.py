"""Defects of the persistence layer found by trying it as an adversarial user would; one test each."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from safetensors.numpy import save as st_save

from serac import Edit
from serac.counterfactual import CounterfactualModel
from serac.modeling import EditableModel
from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig
from serac.store import EditStore, EditStoreConfig, EditStoreError

from .conftest import make_tiny_t5

FIXTURE_EDITOR = Path(__file__).parent / "fixtures" / "editor_v0_1_0"
REPO = Path(__file__).resolve().parent.parent
CITIZEN = Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia")
SPORT = Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")
TENNIS = Edit(prompt="{} plays the sport of", subject="LeBron James", target="tennis")
GREEDY = {"max_new_tokens": 4, "do_sample": False}


@pytest.fixture(scope="module")
def counterfactual(char_tokenizer):
    return CounterfactualModel(make_tiny_t5(char_tokenizer, seed=2), char_tokenizer)


def make_editor(base, tokenizer, counterfactual, embedder):
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))
    return EditableModel(
        base,
        tokenizer,
        scope_classifier=scope,
        counterfactual_model=counterfactual,
        store=EditStore(embedder),
    )


def query_batch(tokenizer, texts):
    return tokenizer(texts, return_tensors="pt", padding=True)


class OtherEmbedder:
    """A 384-d embedder that is not MiniLM: same shape, different geometry."""

    def encode(self, texts, **kwargs):
        vectors = np.zeros((len(texts), 384), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                vectors[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 384] += 1.0
            vectors[row, 383] += 1.0
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def v1_store_file(
    edits: list[tuple[int, Edit]], index: faiss.Index, next_id: int, config: dict | None = None
):
    """A store file in the 0.1.0 format, made by hand with consistent checksums."""
    records = [{"id": edit_id, **edit.to_dict()} for edit_id, edit in edits]
    edits_bytes = np.frombuffer(json.dumps(records).encode(), dtype=np.uint8)
    index_bytes = faiss.serialize_index(index)
    metadata = {
        "format": "serac.edit_store",
        "format_version": "1",
        "serac_version": "0.1.0",
        "config": json.dumps(
            config
            or {
                "embedder_name_or_path": None,
                "encode_batch_size": 128,
                "exact_max_size": 50000,
                "ivf_nprobe": 16,
            }
        ),
        "dimension": str(index.d),
        "next_id": str(next_id),
        "size": str(len(records)),
        "ivf_trained_size": "0",
        "edits_sha256": hashlib.sha256(edits_bytes.tobytes()).hexdigest(),
        "index_sha256": hashlib.sha256(index_bytes.tobytes()).hexdigest(),
    }
    return st_save({"edits": edits_bytes, "index": index_bytes}, metadata=metadata)


def flat_index(vectors: np.ndarray, ids: list[int]) -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    return index


# ---------------------------------------------------------------- 1. re-editing a prompt twice in one call
def test_reediting_a_stored_prompt_twice_in_one_call_keeps_the_store_consistent(
    char_tokenizer, tiny_llama, counterfactual, embedder, tmp_path
):
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    model.edit([SPORT])
    model.edit([TENNIS, TENNIS])
    assert len(model.store) == 1
    assert [edit for _, edit in model.edits] == [TENNIS]
    model.generate(**query_batch(char_tokenizer, ["LeBron James plays the sport of"]), **GREEDY)
    assert model.last_routing[0].edit == TENNIS
    model.save_pretrained(tmp_path / "editor")
    reloaded = EditableModel.from_pretrained(
        tiny_llama, tmp_path / "editor", tokenizer=char_tokenizer, embedder=embedder
    )
    assert [edit for _, edit in reloaded.edits] == [TENNIS]


def test_edit_returns_only_ids_of_stored_edits(embedder):
    store = EditStore(embedder)
    ids = store.add([SPORT, SPORT])
    assert all(edit_id in store for edit_id in ids)
    store.remove(ids)
    assert len(store) == 0


# ---------------------------------------------------------------- 2. save_parts=False into its own folder
def test_save_without_parts_into_the_folder_it_was_loaded_from_keeps_the_parts(
    char_tokenizer, tiny_llama, embedder, tmp_path
):
    folder = tmp_path / "editor"
    shutil.copytree(FIXTURE_EDITOR, folder)
    model = EditableModel.from_pretrained(tiny_llama, folder, tokenizer=char_tokenizer, embedder=embedder)
    model.edit([SPORT])
    model.save_pretrained(folder, save_parts=False)
    reloaded = EditableModel.from_pretrained(tiny_llama, folder, tokenizer=char_tokenizer, embedder=embedder)
    assert reloaded.edits == model.edits


# ---------------------------------------------------------------- 3. atomic, fsynced folder swap
def test_every_rename_of_a_save_leaves_a_complete_folder_at_the_path(
    char_tokenizer, tiny_llama, counterfactual, embedder, tmp_path, monkeypatch
):
    import serac.modeling as modeling

    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    model.edit([SPORT])
    folder = tmp_path / "editor"
    model.save_pretrained(folder)
    model.edit([CITIZEN])
    missing = []

    def checked(original):
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            if not (folder / "serac_config.json").exists():
                missing.append(args)
            return result

        return wrapper

    monkeypatch.setattr(os, "replace", checked(os.replace))
    monkeypatch.setattr(os, "rename", checked(os.rename))
    for name in dir(modeling):
        if name.startswith("_rename"):
            monkeypatch.setattr(modeling, name, checked(getattr(modeling, name)))
    model.save_pretrained(folder)
    monkeypatch.undo()
    assert missing == []
    assert len(EditableModel.from_pretrained(tiny_llama, folder, tokenizer=char_tokenizer).store) == 2


def test_save_fsyncs_every_file_and_folder_it_writes(
    char_tokenizer, tiny_llama, counterfactual, embedder, tmp_path, monkeypatch
):
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    model.edit([SPORT])
    synced: set[str] = set()
    original = os.fsync

    def recording(fd):
        target = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
        synced.add(target)
        return original(fd)

    monkeypatch.setattr(os, "fsync", recording)
    folder = tmp_path / "editor"
    model.save_pretrained(folder)
    monkeypatch.undo()
    # Files are written in a staging folder renamed at the end: compare paths below the top folder.
    synced_below = set()
    for path in synced:
        if Path(path).is_relative_to(tmp_path) and Path(path) != tmp_path:
            synced_below.add("/".join(Path(path).relative_to(tmp_path).parts[1:]))
    written = ["", *(str(p.relative_to(folder)) for p in folder.rglob("*"))]
    assert [p for p in written if p not in synced_below] == []
    assert str(tmp_path) in synced  # the rename itself is made durable


KILLED_SAVE = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from tests.conftest import make_char_tokenizer, make_tiny_llama, make_tiny_t5
    from serac import Edit
    from serac.counterfactual import CounterfactualModel
    from serac.modeling import EditableModel
    from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig
    from serac.store import EditStore
    from tests.test_store_defects import OtherEmbedder

    tokenizer = make_char_tokenizer()
    counterfactual = CounterfactualModel(make_tiny_t5(tokenizer, seed=2), tokenizer)
    original = counterfactual.save_pretrained

    def slow_save(directory):
        original(directory)
        open({marker!r}, "w").close()
        time.sleep(60)

    counterfactual.save_pretrained = slow_save
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))
    model = EditableModel(make_tiny_llama(tokenizer), tokenizer, scope_classifier=scope,
                          counterfactual_model=counterfactual, store=EditStore(OtherEmbedder()))
    model.edit([Edit(prompt="Who wrote book 1?", target="X"), Edit(prompt="Who wrote book 2?", target="Y")])
    model.save_pretrained({folder!r})
    """
)


def test_a_killed_save_keeps_the_previous_save_and_the_next_save_leaves_no_leftovers(
    char_tokenizer, tiny_llama, counterfactual, tmp_path
):
    folder = tmp_path / "editor"
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, OtherEmbedder())
    model.edit([SPORT])
    model.save_pretrained(folder)
    marker = tmp_path / "marker"
    script = KILLED_SAVE.format(repo=str(REPO), marker=str(marker), folder=str(folder))
    child = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not marker.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the child never reached the middle of its save"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    marker.unlink()
    loaded = EditableModel.from_pretrained(
        tiny_llama, folder, tokenizer=char_tokenizer, embedder=OtherEmbedder()
    )
    assert [edit for _, edit in loaded.edits] == [SPORT]
    model.edit([CITIZEN])
    model.save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["editor"]


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_folder_takes_any_staging_folder_with_or_without_atomic_exchange(
    exchange, tmp_path, monkeypatch
):
    """The default parts are trained in a resumable staging folder of their own name, then put in place."""
    from serac import durable_folder

    if not exchange:
        monkeypatch.setattr(durable_folder, "_rename_exchange", lambda first, second: False)
    target, staging = tmp_path / "parts", tmp_path / ".parts.training"
    target.mkdir()
    (target / "old").write_text("old")
    staging.mkdir()
    (staging / "new").write_text("new")
    durable_folder.replace_folder(staging, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]
    assert [p.name for p in target.iterdir()] == ["new"]


# ---------------------------------------------------------------- 4. tampered and hand-made store files
def test_a_tampered_next_id_is_rejected(embedder, tmp_path):
    store = EditStore(embedder)
    store.add([SPORT, CITIZEN])
    path = store.save_pretrained(tmp_path / "store.safetensors")
    raw = path.read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_length])
    header["__metadata__"]["next_id"] = "1"
    new_header = json.dumps(header).encode()
    new_header += b" " * ((8 - len(new_header) % 8) % 8)
    path.write_bytes(len(new_header).to_bytes(8, "little") + new_header + raw[8 + header_length :])
    with pytest.raises(EditStoreError):
        EditStore.from_pretrained(path, embedder)


def test_a_hand_made_store_whose_index_and_edits_disagree_is_rejected(embedder, tmp_path):
    vectors = embedder.encode([SPORT.text, CITIZEN.text], normalize_embeddings=True)
    path = tmp_path / "store.safetensors"
    path.write_bytes(v1_store_file([(0, SPORT), (1, CITIZEN)], flat_index(vectors, [0, 7]), next_id=8))
    with pytest.raises(EditStoreError):
        EditStore.from_pretrained(path, embedder)
    # Two live edits of the same prompt, or a vector that is not normalized: also not a store we wrote.
    path.write_bytes(v1_store_file([(0, SPORT), (1, TENNIS)], flat_index(vectors, [0, 1]), next_id=2))
    with pytest.raises(EditStoreError):
        EditStore.from_pretrained(path, embedder)
    path.write_bytes(v1_store_file([(0, SPORT), (1, CITIZEN)], flat_index(vectors * 3, [0, 1]), next_id=2))
    with pytest.raises(EditStoreError):
        EditStore.from_pretrained(path, embedder)


# ---------------------------------------------------------------- 5. edits and embeddings
@pytest.mark.parametrize("prompt", ["???", "...", " ?! "])
def test_prompts_without_content_are_rejected(prompt):
    with pytest.raises(ValueError, match="content"):
        Edit(prompt=prompt, target="x")


@pytest.mark.parametrize("text", ["Who is \ud800?", "Who is \x00 here?"])
def test_text_that_cannot_be_stored_is_rejected(text):
    with pytest.raises(ValueError):
        Edit(prompt=text, target="x")
    with pytest.raises(ValueError):
        Edit(prompt="Who?", target=text)
    with pytest.raises(ValueError):
        Edit.from_statement(text)


def test_nan_and_zero_embeddings_are_rejected(embedder):
    store = EditStore(embedder)
    dimension = store.dimension
    for bad in (
        np.full((1, dimension), np.nan, dtype=np.float32),
        np.zeros((1, dimension), dtype=np.float32),
    ):
        with pytest.raises(ValueError):
            store.add([SPORT], embeddings=bad)
    assert len(store) == 0


class NanEmbedder(OtherEmbedder):
    def encode(self, texts, **kwargs):
        vectors = super().encode(texts, **kwargs)
        vectors[[i for i, t in enumerate(texts) if "poison" in t]] = np.nan
        return vectors


def test_an_embedder_giving_nan_is_refused_before_anything_changes():
    store = EditStore(NanEmbedder())
    with pytest.raises(ValueError):
        store.add([Edit(prompt="Who wrote the poison pen letters?", target="X")])
    assert len(store) == 0


@pytest.mark.parametrize("exact_max_size", [1, 10, 63])
def test_small_exact_max_size_moves_to_ivf(exact_max_size):
    store = EditStore(OtherEmbedder(), EditStoreConfig(exact_max_size=exact_max_size))
    edits = [Edit(prompt=f"Who owns shop number {i}?", target=f"owner {i}") for i in range(80)]
    ids = store.add(edits[:40])
    ids += store.add(edits[40:])
    assert store.index_kind == "ivf" and len(store) == 80
    assert store.search([edits[5].text], k=1)[0][0][0] == ids[5]


def test_numpy_integer_ids_are_accepted(char_tokenizer, tiny_llama, counterfactual, embedder):
    model = make_editor(tiny_llama, char_tokenizer, counterfactual, embedder)
    ids = model.edit([SPORT, CITIZEN])
    model.remove_edits(np.int64(ids[0]))
    model.remove_edits(np.asarray(ids[1:]))
    assert len(model.store) == 0


# ---------------------------------------------------------------- 6. loading
def test_a_config_from_a_newer_serac_is_a_clear_error(tiny_llama, char_tokenizer, embedder, tmp_path):
    folder = tmp_path / "editor"
    shutil.copytree(FIXTURE_EDITOR, folder)
    config = json.loads((folder / "serac_config.json").read_text())
    config.update(serac_version="9.0.0", format_version=9, retrieval_mode="hybrid")
    (folder / "serac_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="newer"):
        EditableModel.from_pretrained(tiny_llama, folder, tokenizer=char_tokenizer, embedder=embedder)


def test_a_different_embedder_of_the_same_size_is_rejected(embedder, tmp_path):
    store = EditStore(embedder)
    store.add([SPORT, CITIZEN])
    path = store.save_pretrained(tmp_path / "store.safetensors")
    with pytest.raises(EditStoreError, match="embedder"):
        EditStore.from_pretrained(path, OtherEmbedder())


def test_a_deleted_store_file_is_an_error_not_an_empty_store(char_tokenizer, tiny_llama, embedder, tmp_path):
    folder = tmp_path / "editor"
    shutil.copytree(FIXTURE_EDITOR, folder)
    model = EditableModel.from_pretrained(tiny_llama, folder, tokenizer=char_tokenizer, embedder=embedder)
    model.save_pretrained(folder)
    (folder / "edit_store.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="edit store"):
        EditableModel.from_pretrained(tiny_llama, folder, tokenizer=char_tokenizer, embedder=embedder)


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_part_paths_outside_the_folder_are_refused(char_tokenizer, tiny_llama, embedder, tmp_path, where):
    folder = tmp_path / "editor"
    shutil.copytree(FIXTURE_EDITOR, folder)
    shutil.move(str(folder / "scope_classifier"), str(tmp_path / "elsewhere"))
    config = json.loads((folder / "serac_config.json").read_text())
    config["scope_classifier_path"] = str(tmp_path / "elsewhere") if where == "absolute" else "../elsewhere"
    (folder / "serac_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="outside"):
        EditableModel.from_pretrained(tiny_llama, folder, tokenizer=char_tokenizer, embedder=embedder)
    loaded = EditableModel.from_pretrained(
        tiny_llama, folder, tokenizer=char_tokenizer, embedder=embedder, allow_external_parts=True
    )
    assert len(loaded.store) == 2


def test_the_embedder_recorded_in_a_store_file_is_not_followed(embedder, tmp_path, monkeypatch):
    import serac.offline

    vectors = embedder.encode([SPORT.text], normalize_embeddings=True)
    config = {"embedder_name_or_path": "someone/any-model", "encode_batch_size": 128, "exact_max_size": 50000,
              "ivf_nprobe": 16}  # fmt: skip
    path = tmp_path / "store.safetensors"
    path.write_bytes(v1_store_file([(0, SPORT)], flat_index(vectors, [0]), next_id=1, config=config))
    followed = []
    monkeypatch.setattr(serac.offline, "load_embedder", lambda name=None, **kw: followed.append(name))
    with pytest.raises(EditStoreError, match="someone/any-model"):
        EditStore.from_pretrained(path)
    assert followed == []


# ---------------------------------------------------------------- 7. dependency floor
def test_sentence_transformers_floor_is_6():
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (requirement,) = [
        Requirement(r) for r in project["dependencies"] if Requirement(r).name == "sentence-transformers"
    ]
    assert not requirement.specifier.contains(Version("5.7.0"))
    assert requirement.specifier.contains(Version("6.0.0"))


def test_a_cross_encoder_folder_is_refused_under_sentence_transformers_5(tmp_path, monkeypatch):
    import sentence_transformers

    from serac.scope import load_scope_classifier

    (tmp_path / "scope_config.json").write_text(json.dumps({"kind": "cross_encoder", "threshold": 0.5}))
    monkeypatch.setattr(sentence_transformers, "__version__", "5.7.0")
    with pytest.raises(ImportError, match="sentence-transformers"):
        load_scope_classifier(tmp_path)


# ---------------------------------------------------------------- compatibility
def test_a_folder_saved_by_serac_0_1_0_still_loads(char_tokenizer, tiny_llama, embedder):
    model = EditableModel.from_pretrained(
        tiny_llama, FIXTURE_EDITOR, tokenizer=char_tokenizer, embedder=embedder
    )
    assert [edit_id for edit_id, _ in model.edits] == [0, 2]
    model.generate(
        **query_batch(char_tokenizer, ["What is the country of citizenship of Ellie Kemper?"]), **GREEDY
    )
    assert model.last_routing[0].edit_id == 0
    assert model.edit([SPORT]) == [3]
    assert isinstance(torch.tensor(0), torch.Tensor)


# ---------------------------------------------------------------- fuzzing (the long run: benchmarks)
def test_corrupted_store_files_are_clear_errors_or_load_exactly(tmp_path):
    import random

    embedder = OtherEmbedder()
    store = EditStore(embedder)
    ids = store.add([SPORT, CITIZEN, Edit.from_statement("Boris Johnson is the prime minister of the UK.")])
    store.remove(ids[:1])
    raw = store.save_pretrained(tmp_path / "store.safetensors").read_bytes()
    rng = random.Random(0)
    cases = [raw[: rng.randrange(len(raw))] for _ in range(10)]
    for _ in range(30):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        cases.append(bytes(data))
    path = tmp_path / "case.safetensors"
    for case in cases:
        path.write_bytes(case)
        try:
            loaded = EditStore.from_pretrained(path, embedder)
        except EditStoreError:
            continue
        assert loaded.items() == store.items()
