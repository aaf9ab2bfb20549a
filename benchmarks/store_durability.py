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

    python benchmarks/store_durability.py                     # every section, issue-sized
    python benchmarks/store_durability.py --sections crash --crash-trials 10
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
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
# The tiny models and the PostgreSQL cluster come from tests/, a package of the repository root.
REPO = BENCHMARKS.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from store_fuzz import fuzz  # noqa: E402
from store_harness import (  # noqa: E402
    TokenEmbedder,
    collect,
    editor_parts,
    make_editor,
    percentile,
    run_child,
)

from serac.edits import Edit  # noqa: E402
from serac.store import EditStore, EditStoreConfig  # noqa: E402

SECTIONS = ("crash", "save", "shared", "insert", "large", "fuzz")


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


def crash_trials(url: str, trials: int, rng: random.Random) -> dict:
    EditStore(TokenEmbedder(), url=url)._db.dispose()  # create the tables once; no connection crosses a fork
    truth: set[int] = set()
    lost = phantom = torn = wrong = unloadable = 0
    acknowledged = 0
    for trial in range(trials):
        read_fd, pid = None, None
        pid, read_fd = run_child(lambda fd, s=trial: _crash_writer(url, fd, s + 1000 * trials))
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
def _save_writer(parts, folder: Path, seed: int, fd: int) -> None:
    out = os.fdopen(fd, "w", buffering=1)
    model = make_editor(parts, folder)
    n = 0
    while True:
        model.edit([Edit(prompt=f"Who wrote volume_{seed}_{n}?", target=f"author_{n}")])
        n += 1
        ids = sorted(edit_id for edit_id, _ in model.edits)
        out.write("begin " + json.dumps(ids) + "\n")
        model.save_pretrained(folder)
        out.write("saved " + json.dumps(ids) + "\n")


def save_trials(trials: int, rng: random.Random) -> dict:
    parts = editor_parts()
    root = Path(tempfile.mkdtemp(prefix="serac-save-trials-"))
    folder = root / "editor"
    wrong = unloadable = leftovers = mid_save = 0
    last_saved: list[int] | None = None
    for trial in range(trials):
        pid, read_fd = run_child(lambda fd, t=trial: _save_writer(parts, folder, t, fd))
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
            model = make_editor(parts, folder)
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


def shared_store(url: str, operations: int, probes: int) -> dict:
    EditStore(TokenEmbedder(), url=url)._db.dispose()
    started = time.time()
    workers = [run_child(lambda fd, w=w: _shared_worker(url, w, operations // 2, fd)) for w in (0, 1)]
    results = [json.loads(collect(pid, fd)) for pid, fd in workers]
    elapsed = time.time() - started
    expected = set(results[0]["live"]) | set(results[1]["live"])
    check = EditStore(TokenEmbedder(), url=url)
    held = {edit_id for edit_id, _ in check.items()}
    check._db.dispose()
    pid_w, fd_w = run_child(lambda fd: _probe_writer(url, probes, fd))
    pid_r, fd_r = run_child(lambda fd: _probe_reader(url, probes, fd))
    acks = {row[0]: row[2] for row in map(json.loads, collect(pid_w, fd_w).splitlines())}
    seen = {row[0]: row[1] for row in map(json.loads, collect(pid_r, fd_r).splitlines())}
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
sys.path[:0] = [{repo!r}, {benchmarks!r}]
from store_harness import TokenEmbedder
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
    from serac.store.database import EditDatabase, dumps_edit

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
    script = LARGE_CHILD.format(repo=str(REPO), benchmarks=str(BENCHMARKS), url=url, dimension=dimension)
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
