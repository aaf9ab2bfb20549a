"""Durability and sharing figures of the edit store on SQLite and PostgreSQL.

Sections (each within a few minutes of CPU on two cores):

* ``crash``: writer processes adding and removing edits, SIGKILLed at random moments; after each kill the
  store is reopened and checked: no acknowledged edit lost, no removed edit back, an interrupted
  transaction all there or not at all, every held edit found by its own text.
* ``save``: processes killed during ``EditableModel.save_pretrained``; the folder must load and hold
  exactly the last acknowledged save or the interrupted one, and the next save must leave no leftovers.
* ``shared``: two processes on one store, mixed edit / remove / route operations (routing through the
  embedding scope classifier, no generation), then the delay until one routes to an edit the other added.
* ``insert``: 10,000 edits through ``EditStore.add`` next to the embedder's raw batched throughput.
* ``large``: a process opening a database of synthetic edits (random unit embeddings written directly,
  not embedded): seconds until it serves, until its IVF index is ready, memory per edit.
* ``fuzz``: corrupted and hand-made store files and editor configs: each must be a clear error or load
  exactly what was saved.

The writer processes use a deterministic hash embedder (so kills measure the store, not MiniLM); ``insert``
uses the packaged MiniLM. PostgreSQL runs as a throwaway cluster (``tests/pg_server.py``).

Usage::

    python -m serac.bench.store_durability                     # every section, issue-sized
    python -m serac.bench.store_durability --sections crash --crash-trials 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serac.edits import Edit  # noqa: E402
from serac.store import EditStore, EditStoreConfig  # noqa: E402

SECTIONS = ("crash", "save", "shared", "insert", "large", "fuzz")


class TokenEmbedder:
    """Deterministic sentence vectors: the sum of a fixed random vector per word (distinct word sets give
    clearly distinct vectors). Cheap enough that a killed writer spends its time in the store."""

    def __init__(self, dimension: int = 64) -> None:
        self.dimension = dimension
        self._cache: dict[str, np.ndarray] = {}

    def _word(self, word: str) -> np.ndarray:
        vector = self._cache.get(word)
        if vector is None:
            vector = np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dimension)
            self._cache[word] = vector.astype(np.float32)
            vector = self._cache[word]
        return vector

    def encode(self, texts, **kwargs):
        import re

        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                vectors[row] += self._word(word)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# ---------------------------------------------------------------------------------------------- crash
def _crash_writer(url: str, fd: int, seed: int) -> None:
    out = os.fdopen(fd, "w", buffering=1)
    store = EditStore(TokenEmbedder(), EditStoreConfig(sync_interval_s=0.0), url=url)
    rng = random.Random(seed)
    live = [edit_id for edit_id, _ in store.items()]
    n = 0
    while True:
        if live and rng.random() < 0.35:
            victims = rng.sample(live, min(len(live), rng.randint(1, 3)))
            out.write("begin-remove " + " ".join(map(str, victims)) + "\n")
            store.remove(victims)
            for victim in victims:
                live.remove(victim)
            out.write("removed " + " ".join(map(str, victims)) + "\n")
        else:
            batch = [
                Edit(prompt=f"Who maintains record_{seed}_{n + i}?", target=f"keeper_{seed}_{n + i}")
                for i in range(rng.randint(1, 5))
            ]
            n += len(batch)
            out.write(f"begin-add {len(batch)}\n")
            ids = store.add(batch)
            live.extend(ids)
            out.write("added " + " ".join(map(str, ids)) + "\n")


def _run_child(target, *args) -> tuple[int, int]:
    """Fork a child running ``target(*args, write_fd)``; returns (pid, read fd)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            target(*args, write_fd)
        except BaseException:  # pragma: no cover - reported through the exit code
            import traceback

            traceback.print_exc()
            os._exit(3)
        os._exit(0)
    os.close(write_fd)
    return pid, read_fd


def crash_trials(url: str, trials: int, rng: random.Random) -> dict:
    EditStore(TokenEmbedder(), url=url)._db.dispose()  # create the tables once; no connection crosses a fork
    truth: set[int] = set()
    lost = phantom = torn = wrong = unloadable = 0
    acknowledged = 0
    for trial in range(trials):
        read_fd, pid = None, None
        pid, read_fd = _run_child(lambda fd, s=trial: _crash_writer(url, fd, s + 1000 * trials))
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(read_fd) as pipe:
            lines = pipe.read().splitlines()
        added, removed, in_flight = set(), set(), None
        for line in lines:
            # Each line is one write of under PIPE_BUF bytes: it arrives whole or not at all.
            kind, *values = line.split()
            if kind == "added":
                added.update(map(int, values))
                in_flight = None
                acknowledged += len(values)
            elif kind == "removed":
                removed.update(map(int, values))
                in_flight = None
                acknowledged += len(values)
            elif kind == "begin-add":
                in_flight = ("add", int(values[0]) if values else 0)
            elif kind == "begin-remove":
                in_flight = ("remove", set(map(int, values)))
        try:
            store = EditStore(TokenEmbedder(), EditStoreConfig(sync_interval_s=0.0), url=url)
            held = {edit_id for edit_id, _ in store.items()}
        except Exception as error:  # noqa: BLE001 - counted and shown
            print(f"  trial {trial}: store failed to open: {error!r}")
            unloadable += 1
            continue
        expected = (truth | added) - removed
        missing = expected - held
        extra = held - expected
        if in_flight and in_flight[0] == "remove":
            # An interrupted removal: all of its ids gone or none.
            gone = in_flight[1] & missing
            if gone and gone != in_flight[1]:
                torn += 1
            missing -= in_flight[1]
        if in_flight and in_flight[0] == "add":
            # An interrupted add: all of its edits there or none (they are the only unknown ids).
            if extra and len(extra) != in_flight[1]:
                torn += 1
            extra = set() if len(extra) == in_flight[1] else extra
        lost += len(missing)
        phantom += len(extra)
        # Held edits must be found by their own text, as the one nearest neighbour.
        sample = random.Random(trial).sample(sorted(held), min(20, len(held)))
        if sample:
            hits = store.search([store.get(i).text for i in sample], k=1)
            wrong += sum(1 for i, row in zip(sample, hits, strict=True) if not row or row[0][0] != i)
            if store._index.ntotal != len(held):
                wrong += 1
        truth = held
        store._db.dispose()
    return {
        "trials": trials,
        "acknowledged_changes": acknowledged,
        "lost": lost,
        "phantom": phantom,
        "torn_transactions": torn,
        "wrong_after_load": wrong,
        "failed_to_load": unloadable,
        "edits_at_end": len(truth),
    }


# ---------------------------------------------------------------------------------------------- save
def _editor_parts():
    import torch

    from serac.counterfactual import CounterfactualModel
    from tests.conftest import make_char_tokenizer, make_tiny_llama, make_tiny_t5

    torch.set_num_threads(1)
    tokenizer = make_char_tokenizer()
    return (
        tokenizer,
        make_tiny_llama(tokenizer),
        CounterfactualModel(make_tiny_t5(tokenizer, seed=2), tokenizer),
    )


def _make_editor(parts, folder: Path):
    from serac.modeling import EditableModel
    from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig

    tokenizer, base, counterfactual = parts
    if (folder / "serac_config.json").exists():
        return EditableModel.from_pretrained(base, folder, tokenizer=tokenizer, embedder=TokenEmbedder())
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.8, top_k=2))
    return EditableModel(
        base,
        tokenizer,
        scope_classifier=scope,
        counterfactual_model=counterfactual,
        store=EditStore(TokenEmbedder()),
    )


def _save_writer(parts, folder: Path, seed: int, fd: int) -> None:
    out = os.fdopen(fd, "w", buffering=1)
    model = _make_editor(parts, folder)
    n = 0
    while True:
        model.edit([Edit(prompt=f"Who wrote volume_{seed}_{n}?", target=f"author_{n}")])
        n += 1
        ids = sorted(edit_id for edit_id, _ in model.edits)
        out.write("begin " + json.dumps(ids) + "\n")
        model.save_pretrained(folder)
        out.write("saved " + json.dumps(ids) + "\n")


def save_trials(trials: int, rng: random.Random) -> dict:
    parts = _editor_parts()
    root = Path(tempfile.mkdtemp(prefix="serac-save-trials-"))
    folder = root / "editor"
    wrong = unloadable = leftovers = mid_save = 0
    last_saved: list[int] | None = None
    for trial in range(trials):
        pid, read_fd = _run_child(lambda fd, t=trial: _save_writer(parts, folder, t, fd))
        time.sleep(rng.uniform(0.3, 2.0))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(read_fd) as pipe:
            lines = pipe.read().splitlines()
        saved, in_flight = last_saved, None
        for line in lines:
            kind, _, payload = line.partition(" ")
            try:
                ids = json.loads(payload)
            except json.JSONDecodeError:
                continue
            if kind == "saved":
                saved, in_flight = ids, None
            elif kind == "begin":
                in_flight = ids
        mid_save += in_flight is not None
        if not folder.exists() and saved is None:
            continue  # killed before the very first save finished: nothing to check yet
        try:
            model = _make_editor(parts, folder)
            held = sorted(edit_id for edit_id, _ in model.edits)
        except Exception as error:  # noqa: BLE001 - counted and shown
            print(f"  save trial {trial}: failed to load: {error!r}")
            unloadable += 1
            continue
        if held not in (saved, in_flight):
            print(f"  save trial {trial}: loaded {held[-3:]}, last saved {saved and saved[-3:]}")
            wrong += 1
        model.save_pretrained(folder)
        if sorted(p.name for p in root.iterdir()) != ["editor"]:
            leftovers += 1
        last_saved = held
    shutil.rmtree(root, ignore_errors=True)
    return {
        "trials": trials,
        "killed_during_a_save": mid_save,
        "failed_to_load": unloadable,
        "loaded_wrong": wrong,
        "leftovers_after_next_save": leftovers,
    }


# ---------------------------------------------------------------------------------------------- shared
def _shared_worker(url: str, worker: int, operations: int, fd: int) -> None:
    from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig

    out = os.fdopen(fd, "w", buffering=1)
    store = EditStore(TokenEmbedder(), url=url)
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.95, top_k=3))
    rng = random.Random(worker)
    live: dict[str, int] = {}  # prompt -> id of its current edit (this worker's prompts only)
    removed: list[tuple[str, int]] = []
    errors: list[str] = []
    counts = {"edit": 0, "remove": 0, "route": 0}
    version = 0
    for _ in range(operations):
        roll = rng.random()
        try:
            if roll < 0.45 or not live:
                counts["edit"] += 1
                batch = []
                for _ in range(rng.randint(1, 3)):
                    if live and rng.random() < 0.2:
                        prompt = rng.choice(sorted(live))  # a re-edit: supersedes this worker's older edit
                    else:
                        prompt = f"Who maintains item_{worker}_{len(live) + len(removed) + version}?"
                    version += 1
                    batch.append(Edit(prompt=prompt, target=f"maintainer_{worker}_{version}"))
                ids = store.add(batch)
                for edit, edit_id in zip(batch, ids, strict=True):
                    live[edit.prompt] = edit_id
            elif roll < 0.65:
                counts["remove"] += 1
                prompt = rng.choice(sorted(live))
                store.remove([live[prompt]])
                removed.append((prompt, live.pop(prompt)))
            else:
                counts["route"] += 1
                prompt = rng.choice(sorted(live))
                edit_id = live[prompt]
                decision = scope.classify([store.get(edit_id).text], store)[0]
                if not decision.in_scope or decision.edit_id != edit_id:
                    errors.append(f"routed {prompt!r} to {decision.edit_id}, expected {edit_id}")
                if removed:
                    prompt, gone = removed[-1]
                    if prompt not in live:
                        decision = scope.classify([f"{prompt} nobody"], store)[0]
                        if decision.in_scope and decision.edit_id == gone:
                            errors.append(f"routed to removed edit {gone}")
        except Exception as error:  # noqa: BLE001 - counted
            errors.append(repr(error))
    out.write(
        json.dumps({"live": sorted(live.values()), "errors": errors[:20], "n_errors": len(errors), **counts})
    )


def _probe_writer(url: str, probes: int, fd: int) -> None:
    out = os.fdopen(fd, "w", buffering=1)
    store = EditStore(TokenEmbedder(), url=url)
    rng = random.Random(7)
    time.sleep(0.5)
    for i in range(probes):
        time.sleep(rng.uniform(0.01, 0.04))
        (edit_id,) = store.add([Edit(prompt=f"Which firm makes probe_{i}?", target=f"maker_{i}")])
        out.write(json.dumps([i, edit_id, time.time()]) + "\n")


def _probe_reader(url: str, probes: int, fd: int) -> None:
    from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig

    out = os.fdopen(fd, "w", buffering=1)
    store = EditStore(TokenEmbedder(), url=url)  # default sync_interval_s
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.95, top_k=1))
    for i in range(probes):
        query = f"Which firm makes probe_{i}? maker_{i}"
        deadline = time.time() + 30
        while True:
            decision = scope.classify([query], store)[0]
            if decision.in_scope and decision.edit.target == f"maker_{i}":
                out.write(json.dumps([i, time.time()]) + "\n")
                break
            if time.time() > deadline:
                out.write(json.dumps([i, None]) + "\n")
                break
            time.sleep(0.001)


def _collect(pid: int, read_fd: int) -> str:
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"worker {pid} exited with status {status}")
    return text


def shared_store(url: str, operations: int, probes: int) -> dict:
    EditStore(TokenEmbedder(), url=url)._db.dispose()
    started = time.time()
    workers = [_run_child(lambda fd, w=w: _shared_worker(url, w, operations // 2, fd)) for w in (0, 1)]
    results = [json.loads(_collect(pid, fd)) for pid, fd in workers]
    elapsed = time.time() - started
    expected = set(results[0]["live"]) | set(results[1]["live"])
    check = EditStore(TokenEmbedder(), url=url)
    held = {edit_id for edit_id, _ in check.items()}
    check._db.dispose()
    pid_w, fd_w = _run_child(lambda fd: _probe_writer(url, probes, fd))
    pid_r, fd_r = _run_child(lambda fd: _probe_reader(url, probes, fd))
    acks = {row[0]: row[2] for row in map(json.loads, _collect(pid_w, fd_w).splitlines())}
    seen = {row[0]: row[1] for row in map(json.loads, _collect(pid_r, fd_r).splitlines())}
    delays = [1000 * (seen[i] - acks[i]) for i in acks if seen.get(i) is not None]
    for result in results:
        for error in result["errors"][:3]:
            print("  error:", error)
    return {
        "operations": sum(r["edit"] + r["remove"] + r["route"] for r in results),
        "edit_calls": sum(r["edit"] for r in results),
        "remove_calls": sum(r["remove"] for r in results),
        "route_calls": sum(r["route"] for r in results),
        "errors": sum(r["n_errors"] for r in results),
        "lost": len(expected - held),
        "phantom": len(held - expected),
        "seconds": round(elapsed, 1),
        "probes": probes,
        "probes_never_seen": probes - len(delays),
        "delay_ms_p50": round(percentile(delays, 50), 1),
        "delay_ms_p99": round(percentile(delays, 99), 1),
        "delay_ms_max": round(max(delays), 1) if delays else None,
    }


# ---------------------------------------------------------------------------------------------- insert
def insertion(count: int, urls: dict[str, str]) -> dict:
    from serac.offline import load_embedder

    embedder = load_embedder()
    edits = [
        Edit(
            prompt=f"What is the name of the head of department number {i} at company {i % 97}?",
            target=f"Person {i}",
        )
        for i in range(count)
    ]
    texts = [edit.text for edit in edits]
    embedder.encode(texts[:256], batch_size=128)  # warm up
    start = time.perf_counter()
    embedder.encode(texts, batch_size=128, convert_to_numpy=True, normalize_embeddings=True)
    raw = count / (time.perf_counter() - start)
    result = {"edits": count, "embedder_sentences_per_s": round(raw, 1)}
    for name, url in urls.items():
        store = EditStore(embedder, url=url)
        start = time.perf_counter()
        store.add(edits)
        result[f"{name}_edits_per_s"] = round(count / (time.perf_counter() - start), 1)
        assert len(store) == count
    return result


# ---------------------------------------------------------------------------------------------- large
LARGE_CHILD = """
import os, resource, sys, time, json
sys.path.insert(0, {repo!r})
from serac.bench.store_durability import TokenEmbedder
from serac.store import EditStore, EditStoreConfig
class Fixed(TokenEmbedder):
    pass
import numpy as np
embedder = Fixed({dimension})
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
start = time.perf_counter()
store = EditStore(embedder, EditStoreConfig(), url={url!r})
hits = store.search(["Who maintains the synthetic record number 12345?"], k=5)
serves = time.perf_counter() - start
after = rss()
first_query = store.search(np.ascontiguousarray(store._index.reconstruct(777)[None, :]), k=1)[0][0][0]
store.wait_until_indexed()
indexed = time.perf_counter() - start
print(json.dumps({{"serves_s": serves, "ivf_ready_s": indexed, "rss_delta": after - before,
    "rss_after_ivf": rss() - before, "edits": len(store), "kind": store.index_kind, "self_hit": first_query == 777}}))
"""


def large_store(count: int, path: Path, dimension: int = 384) -> dict:
    from serac.store_backends import EditDatabase, dumps_edit

    if path.exists():
        path.unlink()
    url = f"sqlite:///{path}"
    EditStore(TokenEmbedder(dimension), url=url)._db.dispose()  # tables and the embedder fingerprint
    database = EditDatabase(url)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    ids, keys, records, vectors = [], [], [], []
    for offset in range(0, count, 100_000):
        n = min(100_000, count - offset)
        block = rng.standard_normal((n, dimension), dtype=np.float32)
        vectors.append(block / np.linalg.norm(block, axis=1, keepdims=True))
        for i in range(offset, offset + n):
            ids.append(i)
            keys.append(f"who maintains the synthetic record number {i}")
            records.append(
                dumps_edit(
                    {"prompt": f"Who maintains the synthetic record number {i}?", "target": f"keeper {i}"}
                )
            )
    database.import_snapshot(ids, keys, records, np.concatenate(vectors), count)
    database.dispose()
    del ids, keys, records, vectors
    written = time.perf_counter() - start
    script = LARGE_CHILD.format(repo=str(REPO), url=url, dimension=dimension)
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    return {
        "edits": result["edits"],
        "synthetic_rows_written_s": round(written, 1),
        "database_mb": round(path.stat().st_size / 2**20),
        "seconds_until_serving": round(result["serves_s"], 1),
        "seconds_until_ivf_index": round(result["ivf_ready_s"], 1),
        "bytes_per_edit_serving": round(result["rss_delta"] / result["edits"]),
        "bytes_per_edit_after_ivf": round(result["rss_after_ivf"] / result["edits"]),
        "self_hit": result["self_hit"],
    }


# ---------------------------------------------------------------------------------------------- fuzz
def _safetensors_parts(raw: bytes):
    from safetensors.numpy import load

    from serac.store import _read_metadata

    return load(raw), _read_metadata(raw)


def _resign(tensors, metadata):
    from safetensors.numpy import save

    from serac.store import _snapshot_digest

    if metadata.get("format_version") == "2":
        metadata = dict(metadata)
        metadata["sha256"] = _snapshot_digest(metadata, tensors)
    else:
        import hashlib

        for name in ("edits", "index"):
            if name in tensors:
                metadata[f"{name}_sha256"] = hashlib.sha256(tensors[name].tobytes()).hexdigest()
    return save(tensors, metadata=metadata)


def _store_cases(base_v2: bytes, base_v1: bytes, rng: random.Random, embedder) -> list[tuple[str, bytes]]:
    import faiss

    cases = []
    for base, label in ((base_v2, "v2"), (base_v1, "v1")):
        for i in range(70):
            data = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= rng.randint(1, 255)
            cases.append((f"{label} flipped bytes #{i}", bytes(data)))
        for i in range(25):
            cases.append((f"{label} truncated #{i}", base[: rng.randrange(len(base))]))
        cases.append((f"{label} empty", b""))
        cases.append((f"{label} appended garbage", base + b"\x00garbage"))
    tensors, metadata = _safetensors_parts(base_v2)
    records = json.loads(tensors["edits"].tobytes())

    def v2(name, tensor_changes=None, metadata_changes=None, edits=None):
        t = {k: v.copy() for k, v in tensors.items()}
        m = dict(metadata)
        if edits is not None:
            t["edits"] = np.frombuffer(json.dumps(edits).encode(), dtype=np.uint8)
        t.update(tensor_changes or {})
        m.update(metadata_changes or {})
        cases.append((f"v2 hand-made: {name}", _resign(t, m)))

    ids, vectors = tensors["ids"], tensors["embeddings"]
    v2("next_id reuses a live id", metadata_changes={"next_id": str(int(ids.max()))})
    v2("next_id 0", metadata_changes={"next_id": "0"})
    v2("negative next_id", metadata_changes={"next_id": "-5"})
    v2("newer format", metadata_changes={"format_version": "3"})
    v2("format 0", metadata_changes={"format_version": "0"})
    v2("other format", metadata_changes={"format": "something.else"})
    v2("size too big", metadata_changes={"size": str(len(ids) + 1)})
    v2("dimension 0", metadata_changes={"dimension": "0"})
    v2("dimension wrong", metadata_changes={"dimension": "32"})
    v2("config not JSON", metadata_changes={"config": "{"})
    v2("config unknown key", metadata_changes={"config": json.dumps({"retrieval": "hybrid"})})
    v2("config bad value", metadata_changes={"config": json.dumps({"exact_max_size": 0})})
    v2("config wrong type", metadata_changes={"config": json.dumps({"exact_max_size": "big"})})
    v2("config list", metadata_changes={"config": "[]"})
    v2(
        "embedder from the Hub",
        metadata_changes={"config": json.dumps({"embedder_name_or_path": "someone/model"})},
    )
    v2("embedder path", metadata_changes={"config": json.dumps({"embedder_name_or_path": "/etc/passwd"})})
    v2("duplicate ids", tensor_changes={"ids": np.full_like(ids, ids[0])})
    v2("negative id", tensor_changes={"ids": ids - 100})
    v2("ids as float", tensor_changes={"ids": ids.astype(np.float64)})
    v2("ids 2-d", tensor_changes={"ids": ids.reshape(1, -1)})
    v2(
        "NaN embedding",
        tensor_changes={
            "embeddings": np.where(
                np.arange(vectors.size).reshape(vectors.shape) == 3, np.nan, vectors
            ).astype(np.float32)
        },
    )
    v2("zero embedding", tensor_changes={"embeddings": np.vstack([np.zeros_like(vectors[:1]), vectors[1:]])})
    v2("scaled embeddings", tensor_changes={"embeddings": vectors * 2})
    v2("embeddings float16", tensor_changes={"embeddings": vectors.astype(np.float16)})
    v2("embeddings wrong width", tensor_changes={"embeddings": vectors[:, :-1].copy()})
    v2("missing section", tensor_changes={}, metadata_changes={})
    cases[-1] = (
        "v2 hand-made: missing section",
        _resign({k: v for k, v in tensors.items() if k != "ids"}, dict(metadata)),
    )
    v2("extra section", tensor_changes={"extra": np.zeros(3, np.uint8)})
    v2(
        "other embedder fingerprint",
        tensor_changes={"embedder_probe": embedder.encode(["a b", "c d", "e f"])},
    )
    v2("fingerprint NaN", tensor_changes={"embedder_probe": np.full_like(tensors["embedder_probe"], np.nan)})
    bad_records = [
        ("empty prompt", {"prompt": "", "target": "x"}),
        ("content-less prompt", {"prompt": "???", "target": "x"}),
        ("lone surrogate", {"prompt": "Who is \ud800?", "target": "x"}),
        ("NUL", {"prompt": "Who is \x00?", "target": "x"}),
        ("unknown field", {"prompt": "Who?", "target": "x", "weight": 3}),
        ("number target", {"prompt": "Who?", "target": 5}),
        ("statement and prompt", {"prompt": "Who?", "target": "x", "statement": "A is B."}),
        ("placeholder without subject", {"prompt": "{} plays", "target": "x"}),
        ("not an object", ["prompt", "target"]),
        ("null", None),
    ]
    for name, record in bad_records:
        v2(f"record {name}", edits=[record, *records[1:]])
    v2("same prompt twice", edits=[records[0], records[0], *records[2:]])
    v2("records not a list", edits={"0": records[0]})
    v2("one record short", edits=records[:-1])
    v2("records not JSON", tensor_changes={"edits": np.frombuffer(b"[{", dtype=np.uint8)})
    v2("records not UTF-8", tensor_changes={"edits": np.frombuffer(b"\xff\xfe", dtype=np.uint8)})

    tensors1, metadata1 = _safetensors_parts(base_v1)
    records1 = json.loads(tensors1["edits"].tobytes())
    index = faiss.deserialize_index(tensors1["index"])
    ids1 = faiss.vector_to_array(faiss.downcast_index(index).id_map)
    vectors1 = faiss.downcast_index(faiss.downcast_index(index).index).reconstruct_n(0, index.ntotal)

    def v1(name, index=None, edits=None, metadata_changes=None, raw_index=None):
        t = {k: v.copy() for k, v in tensors1.items()}
        m = dict(metadata1)
        if index is not None:
            t["index"] = faiss.serialize_index(index)
        if raw_index is not None:
            t["index"] = np.frombuffer(raw_index, dtype=np.uint8)
        if edits is not None:
            t["edits"] = np.frombuffer(json.dumps(edits).encode(), dtype=np.uint8)
        m.update(metadata_changes or {})
        cases.append((f"v1 hand-made: {name}", _resign(t, m)))

    def flat(vectors, ids, metric=faiss.METRIC_INNER_PRODUCT):
        inner = (
            faiss.IndexFlatIP(vectors.shape[1])
            if metric == faiss.METRIC_INNER_PRODUCT
            else faiss.IndexFlatL2(vectors.shape[1])
        )
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
        return index

    v1("index ids differ", index=flat(vectors1, ids1 + 7))
    v1("index one vector short", index=flat(vectors1[:-1], ids1[:-1]))
    v1("index L2 metric", index=flat(vectors1, ids1, faiss.METRIC_L2))
    v1("index not normalized", index=flat(vectors1 * 3, ids1))
    v1("index NaN", index=flat(np.full_like(vectors1, np.nan), ids1))
    v1("index wrong width", index=flat(vectors1[:, :16], ids1))
    v1("index HNSW", index=faiss.IndexHNSWFlat(vectors1.shape[1], 8))
    v1("index garbage bytes", raw_index=b"IxMp" + os.urandom(200))
    v1("index empty", raw_index=b"")
    v1("index truncated", raw_index=bytes(tensors1["index"][: len(tensors1["index"]) // 2]))
    v1("next_id reuses a live id", metadata_changes={"next_id": str(int(max(ids1)))})
    v1("next_id not a number", metadata_changes={"next_id": "many"})
    v1("record without id", edits=[{k: v for k, v in records1[0].items() if k != "id"}, *records1[1:]])
    v1("record id as string", edits=[{**records1[0], "id": str(records1[0]["id"])}, *records1[1:]])
    v1("record id bool", edits=[{**records1[0], "id": True}, *records1[1:]])
    v1("duplicate record ids", edits=[records1[0], {**records1[1], "id": records1[0]["id"]}])
    v1(
        "embedder from the Hub",
        metadata_changes={"config": json.dumps({"embedder_name_or_path": "someone/model"})},
    )
    return cases


def _config_cases(base_config: dict, folder: Path, rng: random.Random) -> list[tuple[str, object]]:
    cases: list[tuple[str, object]] = [
        ("not JSON", "{"),
        ("a list", []),
        ("a string", "hello"),
        ("newer format", {**base_config, "format_version": 2}),
        ("newer serac with a new field", {**base_config, "serac_version": "9.0", "new_field": 1}),
        ("format version as text", {**base_config, "format_version": "1"}),
        ("absolute scope path", {**base_config, "scope_classifier_path": "/tmp"}),
        ("parent scope path", {**base_config, "scope_classifier_path": "../scope_classifier"}),
        ("nested parent path", {**base_config, "counterfactual_model_path": "a/../../x"}),
        ("scope path number", {**base_config, "scope_classifier_path": 5}),
        ("missing scope folder", {**base_config, "scope_classifier_path": "nothing_here"}),
        ("store_file elsewhere", {**base_config, "store_file": "../edit_store.safetensors"}),
        ("store_file absolute", {**base_config, "store_file": "/etc/passwd"}),
        ("store_file missing", {**base_config, "store_file": "other.safetensors"}),
        ("store_file number", {**base_config, "store_file": 3}),
        ("store not an object", {**base_config, "store": [1]}),
        ("store unknown key", {**base_config, "store": {"mode": "x"}}),
        ("store bad value", {**base_config, "store": {"exact_max_size": -1}}),
        ("store nprobe text", {**base_config, "store": {"ivf_nprobe": "8"}}),
        ("store embedder from the Hub", {**base_config, "store": {"embedder_name_or_path": "someone/model"}}),
        ("base model number", {**base_config, "base_model_name_or_path": 7}),
    ]
    keys = list(base_config)
    for i in range(40):
        mutated = dict(base_config)
        key = rng.choice(keys)
        mutated[key] = rng.choice([None, 0, -1, True, "", "../x", "/x", [], {}, 1e309 if False else 1.5])
        cases.append((f"random field {key} #{i}", mutated))
    return cases


def _fuzz_one(kind: str, payload, context, fd: int) -> None:
    """In a forked child, so that a crash inside a native library is counted rather than fatal."""
    from serac.modeling import EditableModel, SeracConfigError
    from serac.store import EditStoreError

    out = os.fdopen(fd, "w")
    clear = (
        EditStoreError,
        SeracConfigError,
        FileNotFoundError,
        ValueError,
        TypeError,
        KeyError,
        ImportError,
    )
    try:
        if kind == "store":
            path = context["dir"] / f"case_{os.getpid()}.safetensors"
            path.write_bytes(payload)
            store = EditStore.load(path, context["embedder"])
            loaded = (store.items(), store._db.state()[0])
            verdict = "same" if loaded == context["expected_store"] else f"LOADED DIFFERENT {loaded!r:.200}"
        else:
            folder = context["dir"] / f"editor_{os.getpid()}"
            shutil.copytree(context["folder"], folder)
            text = payload if isinstance(payload, str) else json.dumps(payload)
            (folder / "serac_config.json").write_text(text)
            model = EditableModel.from_pretrained(
                context["base"], folder, tokenizer=context["tokenizer"], embedder=context["embedder"]
            )
            verdict = "same" if model.edits == context["expected_edits"] else "LOADED DIFFERENT"
            if verdict == "same" and context["strict_configs"]:
                verdict = "loaded (equivalent)"
    except clear as error:
        message = str(error)
        verdict = "clear error" if len(message) > 10 else f"UNCLEAR {type(error).__name__}: {message!r}"
    except Exception as error:  # noqa: BLE001 - the point of fuzzing
        verdict = f"UNCLEAR {type(error).__name__}: {error!s:.200}"
    out.write(verdict)
    out.close()


def fuzz(rng: random.Random) -> dict:
    from serac.modeling import EditableModel

    tokenizer, base, counterfactual = _editor_parts()
    embedder = TokenEmbedder()
    work = Path(tempfile.mkdtemp(prefix="serac-fuzz-"))
    store = EditStore(embedder)
    ids = store.add([Edit(prompt=f"Who founded company_{i}?", target=f"founder_{i}") for i in range(6)])
    store.remove(ids[:1])
    base_v2 = store.save(work / "base.safetensors").read_bytes()
    from tests.test_store_defects import flat_index, v1_store_file

    items = store.items()
    vectors = embedder.encode([edit.text for _, edit in items])
    base_v1 = v1_store_file(items, flat_index(vectors, [i for i, _ in items]), next_id=6)
    expected_store = (items, 6)
    folder = work / "editor"
    model = _make_editor((tokenizer, base, counterfactual), work / "none")
    model.store = store
    model.save_pretrained(folder)
    expected_edits = EditableModel.from_pretrained(base, folder, tokenizer=tokenizer, embedder=embedder).edits
    context = {
        "dir": work,
        "embedder": embedder,
        "expected_store": expected_store,
        "folder": folder,
        "base": base,
        "tokenizer": tokenizer,
        "expected_edits": expected_edits,
        "strict_configs": False,
    }
    cases = [("store", name, raw) for name, raw in _store_cases(base_v2, base_v1, rng, embedder)]
    base_config = json.loads((folder / "serac_config.json").read_text())
    cases += [("config", name, payload) for name, payload in _config_cases(base_config, folder, rng)]
    tally: dict[str, int] = {}
    bad = []
    for kind, name, payload in cases:
        pid, read_fd = _run_child(lambda fd, k=kind, p=payload: _fuzz_one(k, p, context, fd))
        with os.fdopen(read_fd) as pipe:
            verdict = pipe.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 and not verdict:
            verdict = f"CRASHED (status {status})"
        key = (
            verdict.split(" ")[0]
            if verdict.isupper() or verdict.startswith(("LOADED", "UNCLEAR", "CRASHED"))
            else verdict
        )
        tally[f"{kind}: {key}"] = tally.get(f"{kind}: {key}", 0) + 1
        if verdict.startswith(("LOADED", "UNCLEAR", "CRASHED")):
            bad.append(f"{kind} / {name}: {verdict}")
    shutil.rmtree(work, ignore_errors=True)
    for line in bad[:20]:
        print("  BAD:", line)
    return {"cases": len(cases), "outcomes": tally, "bad": len(bad)}


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--crash-trials", type=int, default=100)
    parser.add_argument("--save-trials", type=int, default=50)
    parser.add_argument("--shared-operations", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--insert", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument(
        "--backends", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"]
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="serac-durability-"))
    server = None

    def url_for(backend: str, name: str) -> str:
        nonlocal server
        if backend == "sqlite":
            return f"sqlite:///{work / (name + '.db')}"
        if server is None:
            from tests.pg_server import start_postgres

            server = start_postgres()
        return server.create_database(name)

    try:
        for section in args.sections:
            start = time.perf_counter()
            if section == "crash":
                for backend in args.backends:
                    result = crash_trials(url_for(backend, f"crash_{backend}"), args.crash_trials, rng)
                    print(f"crash [{backend}]", json.dumps(result), flush=True)
            elif section == "save":
                print("save", json.dumps(save_trials(args.save_trials, rng)), flush=True)
            elif section == "shared":
                for backend in args.backends:
                    result = shared_store(
                        url_for(backend, f"shared_{backend}"), args.shared_operations, args.probes
                    )
                    print(f"shared [{backend}]", json.dumps(result), flush=True)
            elif section == "insert":
                urls = {backend: url_for(backend, f"insert_{backend}") for backend in args.backends}
                print("insert", json.dumps(insertion(args.insert, urls)), flush=True)
            elif section == "large":
                print("large [sqlite]", json.dumps(large_store(args.large, work / "large.db")), flush=True)
            elif section == "fuzz":
                print("fuzz", json.dumps(fuzz(rng)), flush=True)
            print(
                f"  ({section}: {time.perf_counter() - start:.0f} s, max RSS "
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
