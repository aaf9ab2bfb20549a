"""Runtime cost of the edit memory: routing overhead, search scaling, insertion throughput, memory per edit.

Run: ``serac benchtime_perf [--sizes 10000,100000,1000000] [--output perf.json]``

What it measures, on the offline defaults (SmolLM2-135M base, all-MiniLM-L6-v2 embedder):

1. insertion: one ``EditStore.add()`` of 10,000 edits, against the embedder's raw batched throughput on
   the same texts;
2. routing overhead: ``EditableModel.generate()`` against ``base_model.generate()`` (16 new tokens, greedy,
   one query per call) on out-of-scope queries, with 100,000 stored edits; both are timed in alternation and
   the ratio of medians is reported;
3. search scaling: median single-query search time at each store size. Stores past the number of really
   embedded edits are filled with perturbed copies of real edit embeddings (embedding a million sentences
   takes hours on two cores); search cost depends on the index, not on where its vectors came from;
4. memory per stored edit: process resident memory before and after filling the store, per edit;
5. exact vs IVF crossover: at each size, single-query search time of an exact (flat) index and of the IVF
   index the store builds, and the IVF's recall of the exact nearest edit; this is how
   ``EditStoreConfig.exact_max_size`` was chosen (the size past which IVF is clearly faster at full recall).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from serac.edits import Edit
from serac.offline import embed
from serac.store import EditStore

logger = logging.getLogger(__name__)

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "te",
    "vu",
    "sen",
    "dor",
    "an",
    "bel",
    "cor",
    "fin",
    "gal",
    "hol",
    "jun",
    "kir",
    "lum",
    "mar",
    "nor",
    "pel",
    "qua",
    "ros",
    "sil",
    "tor",
    "ur",
    "vin",
]
_RELATIONS = [
    ("{} is a citizen of", ["Peru", "Chad", "Laos", "Fiji", "Oman", "Mali", "Togo", "Iran"]),
    ("{} plays the sport of", ["golf", "polo", "rugby", "chess", "tennis", "hockey", "cricket"]),
    ("{} works for", ["Nokia", "Intel", "Airbus", "Siemens", "Toyota", "Boeing", "Philips"]),
    ("The native language of {} is", ["Dutch", "Thai", "Greek", "Tamil", "Welsh", "Basque", "Zulu"]),
    ("{} was born in", ["Oslo", "Lima", "Quito", "Turin", "Lyon", "Porto", "Split", "Graz"]),
    ("{} plays the", ["violin", "cello", "flute", "harp", "oboe", "banjo", "organ"]),
    ("The headquarters of {} are in", ["Bern", "Riga", "Kyiv", "Baku", "Doha", "Accra"]),
    ("{} is married to", ["Ana Ruiz", "Tom Berg", "Li Wei", "Sara Kim", "Omar Diaz"]),
]
OUT_OF_SCOPE_QUERIES = [
    "Why is the sky blue?",
    "What is the boiling point of water at sea level?",
    "Write a haiku about autumn.",
    "How many legs does a spider have?",
    "What is the square root of 144?",
    "Explain photosynthesis in one sentence.",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in the solar system?",
    "Translate 'good morning' into French.",
    "What year did the Second World War end?",
]


def synthetic_edits(count: int, seed: int = 0) -> list[Edit]:
    """``count`` distinct cloze edits about invented people (fast; no dataset needed)."""
    rng = random.Random(seed)
    edits, seen = [], set()
    while len(edits) < count:
        name = " ".join(
            "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize() for _ in range(2)
        )
        prompt, targets = rng.choice(_RELATIONS)
        key = (name, prompt)
        if key in seen:
            continue
        seen.add(key)
        edits.append(Edit(prompt=prompt, subject=name, target=rng.choice(targets)))
    return edits


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_insertion(embedder, edits: list[Edit]) -> dict:
    texts = [edit.text for edit in edits]
    embed(embedder, texts[:256])  # warm-up
    start = time.perf_counter()
    embed(embedder, texts)
    raw_seconds = time.perf_counter() - start
    store = EditStore(embedder)
    start = time.perf_counter()
    store.add(edits, show_progress=False)
    add_seconds = time.perf_counter() - start
    return {
        "edits": len(edits),
        "embedder_sentences_per_second": len(texts) / raw_seconds,
        "store_add_edits_per_second": len(edits) / add_seconds,
        "add_over_raw_time_ratio": add_seconds / raw_seconds,
    }


def fill_store(store: EditStore, edits: list[Edit], vectors: np.ndarray, size: int, seed: int = 0) -> None:
    """Grow ``store`` to ``size`` edits; past the real vectors, use perturbed copies of them."""
    rng = np.random.default_rng(seed)
    have = len(store)
    chunk = 100_000
    while have < size:
        count = min(chunk, size - have)
        base = rng.integers(0, len(vectors), size=count)
        noisy = vectors[base] + rng.normal(0, 0.05, size=(count, vectors.shape[1])).astype(np.float32)
        fake = [Edit(prompt=f"Filler question number {have + i}?", target="x") for i in range(count)]
        store.add(fake, embeddings=noisy)
        have += count


def measure_search_scaling(embedder, edits, vectors, sizes, repeats: int) -> list[dict]:
    queries = embed(embedder, OUT_OF_SCOPE_QUERIES + [edit.query for edit in edits[:10]])
    results = []
    store = EditStore(embedder)
    real = min(len(edits), sizes[0])
    gc.collect()
    rss_before = resident_bytes()
    store.add(edits[:real], embeddings=vectors[:real])
    for size in sizes:
        fill_store(store, edits, vectors, size)
        gc.collect()
        rss = resident_bytes()
        per_query = [median_ms(lambda q=q: store.search(q[None, :], k=4), repeats) for q in queries]
        results.append(
            {
                "size": len(store),
                "index": store.index_kind,
                "search_ms_median": statistics.median(per_query),
                "resident_bytes_per_edit": (rss - rss_before) / len(store),
            }
        )
        logger.info(
            "search at %d edits (%s): %.3f ms", len(store), store.index_kind, results[-1]["search_ms_median"]
        )
    return results


def measure_index_crossover(
    vectors: np.ndarray, sizes: list[int], repeats: int, nprobe: int = 16
) -> list[dict]:
    """Exact (flat) against IVF search at each size: median single-query time and IVF recall@1."""
    import faiss

    from serac.store.index import ivf_list_count

    rng = np.random.default_rng(1)
    queries = vectors[rng.choice(len(vectors), size=50, replace=False)]
    queries = queries + rng.normal(0, 0.05, size=queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    results = []
    for size in sizes:
        base = rng.integers(0, len(vectors), size=size)
        data = vectors[base] + rng.normal(0, 0.05, size=(size, vectors.shape[1])).astype(np.float32)
        data /= np.linalg.norm(data, axis=1, keepdims=True)
        flat = faiss.IndexFlatIP(data.shape[1])
        flat.add(data)
        lists = ivf_list_count(size)
        ivf = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(data.shape[1]), data.shape[1], lists, faiss.METRIC_INNER_PRODUCT
        )
        ivf.train(data[rng.choice(size, size=min(size, 64 * lists), replace=False)])
        ivf.add(data)
        ivf.nprobe = nprobe
        flat_ms = statistics.median(
            median_ms(lambda q=q, index=flat: index.search(q[None, :], 4), repeats) for q in queries
        )
        ivf_ms = statistics.median(
            median_ms(lambda q=q, index=ivf: index.search(q[None, :], 4), repeats) for q in queries
        )
        _, exact_ids = flat.search(queries, 1)
        _, ivf_ids = ivf.search(queries, 1)
        results.append(
            {
                "size": size,
                "exact_search_ms": flat_ms,
                "ivf_search_ms": ivf_ms,
                "ivf_lists": lists,
                "ivf_recall_at_1": float(np.mean(exact_ids[:, 0] == ivf_ids[:, 0])),
            }
        )
        logger.info("crossover at %d: exact %.3f ms, IVF %.3f ms", size, flat_ms, ivf_ms)
    return results


def measure_routing_overhead(
    embedder, edits, vectors, size: int, repeats: int, scope_path: str | None
) -> dict:
    from serac.counterfactual import CounterfactualModel
    from serac.modeling import EditableModel
    from serac.offline import load_base_model, resolve_embedder
    from serac.scope import CrossEncoderScopeClassifier, ScopeClassifierConfig, load_scope_classifier

    base, tokenizer = load_base_model()
    if scope_path:
        scope = load_scope_classifier(scope_path)
    else:
        # An untrained cross-encoder costs the same per pair as a trained one; with a threshold of 1 it
        # still scores every retrieved candidate but routes nothing.
        scope = CrossEncoderScopeClassifier(resolve_embedder(), ScopeClassifierConfig(threshold=1.0))
    store = EditStore(embedder)
    store.add(edits[: min(len(edits), size)], embeddings=vectors[: min(len(edits), size)])
    fill_store(store, edits, vectors, size)
    # The counterfactual model is never called on out-of-scope queries; the base model stands in for it.
    model = EditableModel(
        base,
        tokenizer,
        scope_classifier=scope,
        counterfactual_model=CounterfactualModel(base, tokenizer),
        store=store,
    )
    settings = {"max_new_tokens": 16, "min_new_tokens": 16, "do_sample": False}
    batches = [tokenizer([query], return_tensors="pt") for query in OUT_OF_SCOPE_QUERIES]
    for batch in batches[:2]:  # warm-up
        base.generate(**batch, **settings)
        model.generate(**batch, **settings)
    base_times, editor_times, routing_times = [], [], []
    routed = scored = 0
    for _ in range(repeats):
        for batch, query in zip(batches, OUT_OF_SCOPE_QUERIES, strict=True):
            base_times.append(median_ms(lambda b=batch: base.generate(**b, **settings), 1))
            editor_times.append(median_ms(lambda b=batch: model.generate(**b, **settings), 1))
            routing_times.append(median_ms(lambda q=query: model.route([q]), 1))
            routed += sum(decision.in_scope for decision in model.last_routing)
            scored += sum(decision.score is not None for decision in model.last_routing)
    return {
        "stored_edits": len(store),
        "index": store.index_kind,
        "base_generate_ms_median": statistics.median(base_times),
        "editable_generate_ms_median": statistics.median(editor_times),
        "routing_ms_median": statistics.median(routing_times),
        "overhead_ratio": statistics.median(editor_times) / statistics.median(base_times),
        "pairwise_ratio_median": statistics.median(
            e / b for e, b in zip(editor_times, base_times, strict=True)
        ),
        "calls": len(base_times),
        "queries_routed_to_an_edit": routed,
        "queries_scored_by_cross_encoder": scored,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="store sizes for the search scaling")
    parser.add_argument("--real-edits", type=int, default=20_000, help="edits embedded for real")
    parser.add_argument(
        "--crossover-sizes",
        default="10000,25000,50000,100000,200000",
        help="sizes of the exact/IVF comparison",
    )
    parser.add_argument(
        "--routing-size", type=int, default=100_000, help="stored edits for the overhead test"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scope-classifier", default=None, help="a trained scope classifier directory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from serac.offline import load_embedder

    embedder = load_embedder()
    edits = synthetic_edits(args.real_edits)
    results: dict = {"config": vars(args)}
    results["insertion"] = measure_insertion(embedder, edits[:10_000])
    print(json.dumps(results["insertion"], indent=2))
    vectors = embed(embedder, [edit.text for edit in edits])
    sizes = [int(size) for size in args.sizes.split(",")]
    results["search"] = measure_search_scaling(embedder, edits, vectors, sizes, args.repeats)
    print(json.dumps(results["search"], indent=2))
    results["index_crossover"] = measure_index_crossover(
        vectors, [int(size) for size in args.crossover_sizes.split(",")], args.repeats
    )
    print(json.dumps(results["index_crossover"], indent=2))
    results["routing"] = measure_routing_overhead(
        embedder, edits, vectors, args.routing_size, args.repeats, args.scope_classifier
    )
    print(json.dumps(results["routing"], indent=2))
    if len(results["search"]) >= 2:
        first, last = results["search"][0], results["search"][-1]
        results["search_time_ratio_largest_to_smallest"] = (
            last["search_ms_median"] / first["search_ms_median"]
        )
        print(
            f"search time at {last['size']} / at {first['size']}: {results['search_time_ratio_largest_to_smallest']:.2f}"
        )
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
