"""The ``fuzz`` section of the store-durability study: corrupted and hand-made store files and editor
configs, each loaded in a forked child; each must be a clear error or load exactly what was saved."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
from store_harness import TokenEmbedder, editor_parts, make_editor, run_child

from serac.edits import Edit
from serac.store import EditStore


def _safetensors_parts(raw: bytes):
    from safetensors.numpy import load

    from serac.store.snapshot import read_metadata

    return load(raw), read_metadata(raw)


def _resign(tensors, metadata):
    from safetensors.numpy import save

    from serac.store.snapshot import snapshot_digest as _snapshot_digest

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

    tokenizer, base, counterfactual = editor_parts()
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
    model = make_editor((tokenizer, base, counterfactual), work / "none")
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
        pid, read_fd = run_child(lambda fd, k=kind, p=payload: _fuzz_one(k, p, context, fd))
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
