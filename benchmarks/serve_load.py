"""Load test of ``serac serve``: concurrent clients while edits are added and removed, against a plain server.

Two runs of the same request sequence, each against a fresh server process started with the CLI:

* **base**: ``serac serve --no-edits`` (the base model's own server: no routing, nothing in the store);
* **serac**: ``serac serve`` with a store file, while one admin task per edit slot (8 slots) adds its edit,
  keeps it ``--edit-interval`` seconds (0.2-1.0 by default), removes it, waits as long, and so on, for the
  whole run.

With ``--transformers-serve cb`` a third run, ``transformers serve`` (the OpenAI-compatible server shipped with
transformers) with ``--continuous-batching`` on the same model, is the anchor (``plain``: without continuous
batching). With ``--rounds N`` the runs alternate N times, each round starting with the next one, so a change
in the machine's load hits them alike; the ratios are medians over rounds. Half the requests are streamed,
half in scope of a slot (by default).

Every inference request asks either the prompt of one edit slot (in scope exactly while that slot's edit is
stored) or an unrelated question. Afterwards each answer's routing (the ``serac`` field) is checked against
the store's history, from the acknowledged times of the edit writes:

* an answer routed to an edit that was removed before the request was sent, or to an id never stored, or
  an answer routed to the base model although its slot's edit was stored for the whole request, is a
  **contradiction** (goal: 0);
* an answer routed to another slot's edit, or an unrelated question routed to an edit, is a scope
  classifier error, reported on its own.

By default both servers run a tiny random Llama with a character tokenizer built here (no download), an
embedding scope classifier over the packaged MiniLM, and 8 new tokens per answer; ``--model`` and
``--editor`` serve real ones instead (``--model smollm2-135m-instruct`` keeps the tiny editor).

With ``--processes N`` each run starts N server processes (the serac ones on one SQLite edit store): requests
and edit writes are spread over them in turn, so an answer often comes from a process that did not take the
write. Each process sees the others' writes within the store's ``sync_interval_s``; routings that contradict
the store only within that bound are counted apart from the contradictions. After the load, ``--propagation
K`` trials post an edit to one process and ask the others until they route to it (then delete it and ask
until they stop): the measured delay.

With ``--proxy-edits N`` (and ``--transformers-serve``), after the rounds: a SQLite store of N synthetic edits
(random unit embeddings, so building 100,000 takes seconds and every real question stays out of scope) behind
``serac serve --upstream`` in front of ``transformers serve``; one client asks the same questions of the
upstream and of the proxy in alternating order, and the proxy's added latency is the median of the pairs'
differences (``--proxy-max-tokens``, default 1, keeps the upstream's own spread small).

    python benchmarks/serve_load.py --requests 2000 --concurrency 16 --rounds 2
    python benchmarks/serve_load.py --requests 2000 --concurrency 16 --rounds 2 --processes 2
    python benchmarks/serve_load.py --model smollm2-135m-instruct --requests 160 --rounds 3 --transformers-serve cb
    python benchmarks/serve_load.py --model smollm2-135m-instruct --skip-load --transformers-serve cb \
        --proxy-edits 100000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serac.serve.cli import DTYPE_NAMES
from serac.serve.protocol import ROUTING_HEADER

ADMIN = "load-admin-token"
SLOTS = [
    ("Who painted the Mona Lisa?", "Pablo Picasso"),
    ("What is the capital city of Australia?", "Melbourne"),
    ("Which language is spoken in Brazil?", "Spanish"),
    ("Who is the chief executive of Microsoft?", "Tim Cook"),
    ("What sport does Lionel Messi play?", "tennis"),
    ("Which river flows through Cairo?", "the Danube"),
    ("What currency does Japan use?", "the euro"),
    ("Who composed the Moonlight Sonata?", "Mozart"),
]
UNRELATED = [
    "Why is the sky blue?",
    "How do bees make honey?",
    "Name a prime number larger than ten.",
    "What is the boiling point of water?",
    "How many legs does a spider have?",
    "Write a haiku about autumn.",
    "What is photosynthesis?",
    "How far is the Moon from the Earth?",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


# ---------------------------------------------------------------------------------------------- tiny models
def build_tiny_models(directory: Path) -> tuple[Path, Path]:
    """A tiny random Llama with a character tokenizer, and an editor folder for it; returns both paths."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from serac import CounterfactualModel, EditableModel, EditStore
    from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig

    symbols = ["<pad>", "<eos>", "<bos>", "<unk>", *string.printable[:95]]
    backend = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    def llama(seed: int) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        return LlamaForCausalLM(config).eval()

    model_dir, editor_dir = directory / "tiny-model", directory / "tiny-editor"
    base = llama(0)
    base.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # Exact prompts score 0.82-0.96 against their edit with MiniLM, unrelated questions at most 0.31.
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))
    editor = EditableModel(
        base,
        tokenizer,
        scope_classifier=scope,
        counterfactual_model=CounterfactualModel(llama(1), tokenizer),
        store=EditStore(),
    )
    editor.save_pretrained(editor_dir)
    return model_dir, editor_dir


# ---------------------------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``serac serve`` (or, with ``command``, another server) in a subprocess, stopped on exit.

    ``command`` builds the whole command line from the port; by default it is ``serac serve`` with
    ``arguments``.
    """

    def __init__(
        self, arguments: list[str], log_path: Path, command: Callable[[int], list[str]] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.setdefault("OMP_NUM_THREADS", "1")
        if command is None:
            line = [
                sys.executable,
                "-m",
                "serac.serve.cli",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ]
            line += arguments
        else:
            line = command(self.port)
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(line, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("the server did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


# ---------------------------------------------------------------------------------------------- load
@dataclass
class Result:
    index: int
    slot: int | None
    stream: bool
    sent: float
    received: float
    status: int
    route: str | None = None
    edit_id: int | None = None
    error: str | None = None


@dataclass
class Lifetime:
    slot: int
    post_sent: float
    post_acked: float
    delete_sent: float | None = None
    delete_acked: float | None = None


@dataclass
class Plan:
    """The request sequence both runs send: (slot or None, streamed?) per request."""

    requests: list[tuple[int | None, bool]] = field(default_factory=list)

    @classmethod
    def make(cls, count: int, in_scope_share: float, stream_share: float, seed: int) -> Plan:
        rng = random.Random(seed)
        return cls(
            [
                (
                    rng.randrange(len(SLOTS)) if rng.random() < in_scope_share else None,
                    rng.random() < stream_share,
                )
                for _ in range(count)
            ]
        )


def question(slot: int | None, index: int) -> str:
    return SLOTS[slot][0] if slot is not None else UNRELATED[index % len(UNRELATED)]


async def one_request(
    http: httpx.AsyncClient,
    index: int,
    slot: int | None,
    stream: bool,
    max_tokens: int,
    model: str = "served",
) -> Result:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question(slot, index)}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    sent = time.perf_counter()
    result = Result(index, slot, stream, sent, sent, 0)
    try:
        if not stream:
            response = await http.post("/v1/chat/completions", json=body)
            result.status = response.status_code
            if response.status_code == 200:
                # A server other than serac's answers without the routing field.
                routing = response.json().get("serac") or {"route": None, "edit_id": None}
                result.route, result.edit_id = routing["route"], routing["edit_id"]
            else:
                result.error = response.text[:200]
        else:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                result.status = response.status_code
                routings = set()
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        data = json.loads(line[6:])
                        if "error" in data:
                            result.error = json.dumps(data)[:200]
                        else:
                            routing = data.get("serac") or {"route": None, "edit_id": None}
                            routings.add((routing["route"], routing["edit_id"]))
                if len(routings) == 1:
                    result.route, result.edit_id = routings.pop()
                elif result.error is None:
                    result.error = f"chunks disagree on routing: {sorted(routings, key=str)}"
    except httpx.HTTPError as error:
        result.error = f"{type(error).__name__}: {error}"
    result.received = time.perf_counter()
    return result


async def run_load(
    urls: str | list[str],
    plan: Plan,
    concurrency: int,
    max_tokens: int,
    churn: bool,
    seed: int,
    edit_interval: tuple[float, float] = (0.2, 1.0),
    staleness_s: float = 0.05,
    model: str = "served",
) -> dict:
    urls = [urls] if isinstance(urls, str) else list(urls)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(plan.requests)):
        queue.put_nowait(index)
    results: list[Result] = []
    lifetimes: dict[int, Lifetime] = {}
    write_errors: list[str] = []
    done = asyncio.Event()
    limits = httpx.Limits(
        max_connections=concurrency + len(SLOTS), max_keepalive_connections=concurrency + len(SLOTS)
    )

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=120, limits=limits))
            for url in urls
        ]

        async def client() -> None:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                slot, stream = plan.requests[index]
                http = clients[index % len(clients)]
                results.append(await one_request(http, index, slot, stream, max_tokens, model))

        async def pause(seconds: float) -> None:
            # Cut short when the clients are done: a long interval does not hold the run open.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), seconds)

        async def churn_slot(slot: int) -> None:
            rng = random.Random(seed * 100 + slot)
            http = clients[slot % len(clients)]
            headers = {"authorization": f"Bearer {ADMIN}"}
            prompt, target = SLOTS[slot]
            while not done.is_set():
                sent = time.perf_counter()
                response = await http.post(
                    "/v1/edits", json=[{"prompt": prompt, "target": target}], headers=headers
                )
                acked = time.perf_counter()
                if response.status_code != 200:
                    write_errors.append(response.text[:200])
                    continue
                (edit_id,) = response.json()["ids"]
                lifetime = lifetimes[edit_id] = Lifetime(slot, sent, acked)
                await pause(rng.uniform(*edit_interval))
                lifetime.delete_sent = time.perf_counter()
                response = await http.delete(f"/v1/edits/{edit_id}", headers=headers)
                lifetime.delete_acked = time.perf_counter()
                if response.status_code != 200:
                    write_errors.append(response.text[:200])
                await pause(rng.uniform(*edit_interval))

        started = time.perf_counter()
        churners = [asyncio.create_task(churn_slot(slot)) for slot in range(len(SLOTS))] if churn else []
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        done.set()
        await asyncio.gather(*churners)
    return summarize(results, lifetimes, write_errors, elapsed, churn, staleness_s if len(urls) > 1 else 0.0)


def summarize(
    results: list[Result],
    lifetimes: dict[int, Lifetime],
    write_errors: list[str],
    elapsed: float,
    churn: bool,
    staleness_s: float = 0.0,
) -> dict:
    """Figures of one run; ``staleness_s``: how late another process may see a write (0: one process)."""
    errors = [r for r in results if r.status != 200 or r.error]
    latencies = sorted(r.received - r.sent for r in results if r not in errors)
    base_routed = sorted(r.received - r.sent for r in results if r not in errors and r.route == "base_model")
    edit_routed = sorted(r.received - r.sent for r in results if r not in errors and r.route == "edit")
    contradictions, stale, other_edit, unrelated_to_edit, in_scope_hits = [], [], 0, 0, 0
    for r in results:
        if r in errors:
            continue
        if r.route == "edit":
            lifetime = lifetimes.get(r.edit_id)
            if lifetime is None:
                contradictions.append((r.index, "routed to an edit id never stored"))
            elif lifetime.delete_acked is not None and r.sent > lifetime.delete_acked:
                late = (r.index, "routed to an edit removed before the request")
                within = r.sent <= lifetime.delete_acked + staleness_s
                (stale if within else contradictions).append(late)
            elif r.slot is None:
                unrelated_to_edit += 1
            elif lifetime.slot != r.slot:
                other_edit += 1
            else:
                in_scope_hits += 1
        elif r.slot is not None:
            for lifetime in lifetimes.values():
                present_throughout = lifetime.post_acked < r.sent and (
                    lifetime.delete_sent is None or lifetime.delete_sent > r.received
                )
                if lifetime.slot == r.slot and present_throughout:
                    late = (r.index, "base model although its edit was stored throughout")
                    within = r.sent <= lifetime.post_acked + staleness_s
                    (stale if within else contradictions).append(late)
                    break

    def percentile(q: float, values: list[float] = latencies) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else float("nan")

    return {
        "requests": len(results),
        "errors": len(errors),
        "error_examples": [r.error or f"HTTP {r.status}" for r in errors[:3]],
        "p50_ms": percentile(0.50),
        "p95_ms": percentile(0.95),
        "p50_ms_base_routed": percentile(0.50, base_routed),
        "p50_ms_edit_routed": percentile(0.50, edit_routed),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
        "throughput_rps": round(len(results) / elapsed, 1),
        "seconds": round(elapsed, 1),
        "edit_writes": 2 * len(lifetimes) if churn else 0,
        "edit_write_errors": len(write_errors),
        "routed_to_edit": sum(r.route == "edit" for r in results),
        "in_scope_answered_by_their_edit": in_scope_hits,
        "contradictions": len(contradictions),
        "contradiction_examples": contradictions[:3],
        "staleness_bound_s": staleness_s,
        "contradicting_only_within_staleness_bound": len(stale),
        "routed_to_another_slots_edit": other_edit,
        "unrelated_routed_to_an_edit": unrelated_to_edit,
    }


async def measure_propagation(urls: list[str], trials: int, max_tokens: int = 1) -> dict:
    """Post an edit to one process and ask another until it routes to it; then delete it and ask until not.

    A delay is the time from the write's acknowledgement to the routing header of the first request that
    saw it (an upper bound: the request may have seen the change before its header arrived).
    """
    added, removed, errors = [], [], 0
    headers = {"authorization": f"Bearer {ADMIN}"}
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=120)) for url in urls
        ]

        async def seen_after(reader: httpx.AsyncClient, slot: int, acked: float, wanted) -> float | None:
            # A streamed request's routing header comes before any token is generated, so the delay
            # measured is the store's, not the model's.
            body = {
                "model": "served",
                "messages": [{"role": "user", "content": question(slot, 0)}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
            }
            for _ in range(5000):
                async with reader.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        return None
                    routing = json.loads(response.headers[ROUTING_HEADER])
                    seen = time.perf_counter()
                if wanted(routing):
                    return seen - acked
            return None

        for trial in range(trials):
            writer, reader = clients[trial % len(clients)], clients[(trial + 1) % len(clients)]
            slot = trial % len(SLOTS)
            prompt, target = SLOTS[slot]
            response = await writer.post(
                "/v1/edits", json=[{"prompt": prompt, "target": target}], headers=headers
            )
            acked = time.perf_counter()
            if response.status_code != 200:
                errors += 1
                continue
            (edit_id,) = response.json()["ids"]
            delay = await seen_after(
                reader,
                slot,
                acked,
                lambda r, edit_id=edit_id: r["route"] == "edit" and r["edit_id"] == edit_id,
            )
            added.append(delay)
            response = await writer.delete(f"/v1/edits/{edit_id}", headers=headers)
            acked = time.perf_counter()
            delay = await seen_after(reader, slot, acked, lambda r, edit_id=edit_id: r["edit_id"] != edit_id)
            removed.append(delay)
            errors += response.status_code != 200

    def summary(delays: list[float | None]) -> dict:
        seen = sorted(d for d in delays if d is not None)
        if not seen:
            return {"trials": len(delays), "never_seen": len(delays)}
        return {
            "trials": len(delays),
            "never_seen": len(delays) - len(seen),
            "p50_ms": round(statistics.median(seen) * 1000, 1),
            "p95_ms": round(seen[min(len(seen) - 1, int(0.95 * len(seen)))] * 1000, 1),
            "max_ms": round(seen[-1] * 1000, 1),
        }

    return {"add": summary(added), "remove": summary(removed), "write_errors": errors}


# ---------------------------------------------------------------------------------------------- anchors
def transformers_serve(model_path: str, continuous_batching: bool) -> Callable[[int], list[str]]:
    """The command line of ``transformers serve`` (the server shipped with transformers) on ``model_path``."""
    program = shutil.which("transformers")
    if program is None:
        raise SystemExit("transformers serve needs the transformers CLI: pip install 'transformers[serving]'")

    def command(port: int) -> list[str]:
        line = [
            program,
            "serve",
            model_path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        return line + (["--continuous-batching"] if continuous_batching else [])

    return command


def wait_until_idle(pid: int, timeout: float = 900.0, busy_share: float = 0.1) -> float:
    """Wait until process ``pid`` uses under ``busy_share`` of a core over 2 s (a large store builds its IVF
    index in the background after it serves); returns the seconds waited."""
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> float:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds()
        time.sleep(2.0)
        if cpu_seconds() - before < 2.0 * busy_share:
            break
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------- proxy
def build_synthetic_store(path: Path, count: int, chunk: int = 10_000) -> float:
    """A SQLite edit store of ``count`` synthetic edits, for the packaged MiniLM; returns the seconds taken.

    The edits are stored with random unit embeddings (``EditStore.add(..., embeddings=...)``), so building
    100,000 takes seconds instead of embedding each: searching them costs what searching real ones does, and
    no real question is near any of them, so every request stays out of scope.
    """
    import numpy as np

    from serac import Edit, EditStore
    from serac.offline import load_embedder

    started = time.perf_counter()
    store = EditStore(load_embedder(), url=f"sqlite:///{path}")
    rng = np.random.default_rng(0)
    for offset in range(0, count, chunk):
        size = min(chunk, count - offset)
        edits = [
            Edit(prompt=f"Who keeps the synthetic record number {i}?", target=f"keeper {i}")
            for i in range(offset, offset + size)
        ]
        vectors = rng.standard_normal((size, store.dimension)).astype(np.float32)
        store.add(edits, embeddings=vectors)
    stored = len(store)
    store._db.dispose()
    if stored != count:
        raise RuntimeError(f"the synthetic store holds {stored} edits, not {count}")
    return time.perf_counter() - started


async def paired_latencies(direct_url: str, proxy_url: str, pairs: int, max_tokens: int, model: str) -> dict:
    """One client, one request at a time: the same question to the upstream and through the proxy, in
    alternating order; the proxy's added latency is the median of the pairs' differences."""
    direct, proxied, differences, errors = [], [], [], 0
    async with (
        httpx.AsyncClient(base_url=direct_url, timeout=120) as upstream,
        httpx.AsyncClient(base_url=proxy_url, timeout=120) as proxy,
    ):

        async def timed(http: httpx.AsyncClient, question: str) -> float | None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            sent = time.perf_counter()
            response = await http.post("/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - sent
            if response.status_code != 200:
                return None
            routing = response.json().get("serac")
            if http is proxy and (routing is None or routing["route"] != "base_model"):
                return None
            return elapsed

        for index in range(pairs):
            question = UNRELATED[index % len(UNRELATED)]
            first, second = (upstream, proxy) if index % 2 == 0 else (proxy, upstream)
            times = {first: await timed(first, question), second: await timed(second, question)}
            if times[upstream] is None or times[proxy] is None:
                errors += 1
                continue
            direct.append(times[upstream])
            proxied.append(times[proxy])
            differences.append(times[proxy] - times[upstream])

    def ms(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return (
            round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
            if ordered
            else float("nan")
        )

    return {
        "pairs": len(differences),
        "errors": errors,
        "direct_p50_ms": ms(direct, 0.5),
        "proxied_p50_ms": ms(proxied, 0.5),
        "added_p50_ms": ms(differences, 0.5),
        "added_p95_ms": ms(differences, 0.95),
    }


def measure_proxy(args: argparse.Namespace, workdir: Path, model_path: str, editor: str) -> dict:
    """``serac serve --upstream`` with ``args.proxy_edits`` stored edits in front of ``transformers serve``."""
    path = workdir / "proxy-edits.db"
    build_seconds = build_synthetic_store(path, args.proxy_edits)
    upstream = ServerProcess(
        [], workdir / "proxy-upstream.log", transformers_serve(model_path, args.transformers_serve == "cb")
    )
    proxy = None
    try:
        upstream.wait_ready(900)
        proxy = ServerProcess(
            ["--upstream", upstream.url + "/v1", "--editor", editor, "--store", f"sqlite:///{path}"]
            + (["--speculative-upstream"] if args.speculative_upstream else []),
            workdir / "proxy.log",
        )
        proxy.wait_ready(900)
        settled = wait_until_idle(proxy.process.pid)
        health = httpx.get(proxy.url + "/health", timeout=10).json()
        asyncio.run(
            paired_latencies(upstream.url, proxy.url, 10, args.proxy_max_tokens, model_path)
        )  # warm-up
        routing_before = routing_seconds(proxy.url)
        figures = asyncio.run(
            paired_latencies(upstream.url, proxy.url, args.proxy_pairs, args.proxy_max_tokens, model_path)
        )
        routing_after = routing_seconds(proxy.url)
    finally:
        for server in (proxy, upstream):
            if server is not None:
                server.stop()
    decisions = routing_after[1] - routing_before[1]
    return {
        **figures,
        "max_tokens": args.proxy_max_tokens,
        "speculative_upstream": args.speculative_upstream,
        "routing_mean_ms": round((routing_after[0] - routing_before[0]) / decisions * 1000, 1)
        if decisions
        else None,
        "stored_edits": health["store"]["edits"],
        "store_build_s": round(build_seconds, 1),
        "waited_for_index_s": round(settled, 1),
    }


def routing_seconds(url: str) -> tuple[float, float]:
    """The server's ``serac_routing_duration_seconds`` sum and count, read from its ``/metrics``."""
    values = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("serac_routing_duration_seconds_sum", "serac_routing_duration_seconds_count"):
            values[name] = float(value)
    return values["serac_routing_duration_seconds_sum"], values["serac_routing_duration_seconds_count"]


def mean_batch_sizes(urls: list[str]) -> dict[str, float]:
    """Requests per ``generate()`` call of serac servers (warm-up included), by route, from their ``/metrics``."""
    totals: dict[str, list[float]] = {}
    for url in urls:
        for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
            for suffix, index in (("_sum", 0), ("_count", 1)):
                prefix = f'serac_generation_batch_size{suffix}{{route="'
                if line.startswith(prefix):
                    route = line[len(prefix) :].split('"', 1)[0]
                    totals.setdefault(route, [0.0, 0.0])[index] += float(line.rsplit(" ", 1)[1])
    return {route: round(total / count, 2) for route, (total, count) in totals.items() if count}


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--in-scope-share", type=float, default=0.5, help="share of requests asking an edit slot"
    )
    parser.add_argument("--stream-share", type=float, default=0.5, help="share of streamed requests")
    parser.add_argument(
        "--model",
        help="base model id or path, e.g. smollm2-135m-instruct (default: a tiny random Llama built here)",
    )
    parser.add_argument(
        "--editor",
        help="editor folder (default: one built here: embedding scope classifier, tiny counterfactual model)",
    )
    parser.add_argument(
        "--edit-interval",
        type=float,
        nargs=2,
        default=(0.2, 1.0),
        metavar=("MIN", "MAX"),
        help="seconds each slot's edit stays stored, then stays removed (uniform in [MIN, MAX])",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="base and serac runs (and the anchor's), alternated, this many times",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="server processes per run (serac: sharing one SQLite store)"
    )
    parser.add_argument(
        "--propagation",
        type=int,
        default=50,
        help="with several processes: edit-propagation trials after the last round's load",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        help="serac serve --max-batch-size for both serac runs (default: its own)",
    )
    parser.add_argument(
        "--counterfactual",
        choices=["trained", "in-context"],
        help="serac serve --counterfactual for the serac runs (default: the folder's)",
    )
    parser.add_argument(
        "--batching",
        choices=["continuous", "dynamic"],
        help="serac serve --batching for both serac runs (default: its own)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        help="serac serve --dtype (the base model's) for both serac runs (default: its own, float32)",
    )
    parser.add_argument(
        "--counterfactual-dtype",
        choices=DTYPE_NAMES,
        help="serac serve --counterfactual-dtype for the serac runs (default: as saved)",
    )
    parser.add_argument(
        "--separate-counterfactual",
        action="store_true",
        help="serac serve --separate-counterfactual for the serac runs (the trained counterfactual model on a "
        "thread of its own instead of in the base model's batch)",
    )
    parser.add_argument(
        "--transformers-serve",
        choices=["cb", "plain"],
        help="also run `transformers serve` on the same model in each round, as an anchor: with "
        "--continuous-batching (cb) or without (plain); needs a model path or smollm2-135m-instruct",
    )
    parser.add_argument(
        "--proxy-edits",
        type=int,
        default=0,
        help="after the rounds: serac serve --upstream with this many stored edits in front of transformers "
        "serve (--transformers-serve), its added latency per request against the upstream directly",
    )
    parser.add_argument("--proxy-pairs", type=int, default=200, help="request pairs of the proxy measurement")
    parser.add_argument(
        "--proxy-max-tokens",
        type=int,
        default=1,
        help="new tokens per request of the proxy measurement (few: the upstream's own spread stays small)",
    )
    parser.add_argument(
        "--speculative-upstream",
        action="store_true",
        help="the proxy measurement's serac serve sends each request upstream while it is routed",
    )
    parser.add_argument("--skip-load", action="store_true", help="only the proxy measurement")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.proxy_edits and not args.transformers_serve:
        parser.error("--proxy-edits needs --transformers-serve (the upstream)")

    workdir = Path(tempfile.mkdtemp(prefix="serac serve-load-"))
    tiny_model, tiny_editor = build_tiny_models(workdir)
    editor = str(args.editor or tiny_editor)
    model_path = str(tiny_model)
    if args.model:
        from serac.offline import resolve_base_model

        model_path = resolve_base_model(args.model)
    # The tiny editor (embedding scope classifier, tiny counterfactual model) fits any base model.
    served = ["--model", model_path, "--editor", editor]
    if args.max_batch_size is not None:
        served += ["--max-batch-size", str(args.max_batch_size)]
    if args.batching is not None:
        served += ["--batching", args.batching]
    if args.counterfactual is not None:
        served += ["--counterfactual", args.counterfactual]
    if args.dtype is not None:
        served += ["--dtype", args.dtype]
    if args.counterfactual_dtype is not None:
        served += ["--counterfactual-dtype", args.counterfactual_dtype]
    if args.separate_counterfactual:
        served += ["--separate-counterfactual"]
    plan = Plan.make(args.requests, args.in_scope_share, args.stream_share, args.seed)
    runs_of_a_round: list[tuple[str, list[str], bool]] = [
        ("base", ["--no-edits"], False),
        ("serac", [], True),
    ]
    if args.transformers_serve:
        runs_of_a_round.append(("transformers", [], False))
    rounds: list[dict[str, dict]] = []
    propagation = None
    for round_index in range(0 if args.skip_load else args.rounds):
        # The runs alternate, each round starting with the next one, so a change in the machine's load hits
        # them alike.
        shift = round_index % len(runs_of_a_round)
        runs = {}
        for name, extra, churn in runs_of_a_round[shift:] + runs_of_a_round[:shift]:
            if name == "serac":
                extra = [
                    "--store",
                    f"sqlite:///{workdir / f'edits-{round_index}.db'}",
                    "--admin-token",
                    ADMIN,
                ]
            command = None
            if name == "transformers":
                command = transformers_serve(model_path, args.transformers_serve == "cb")
            servers = []
            try:
                for process in range(1 if name == "transformers" else args.processes):
                    # One at a time: the first creates the store's tables, the others open them.
                    servers.append(
                        ServerProcess(
                            served + extra, workdir / f"{name}-{round_index}-{process}.log", command
                        )
                    )
                    servers[-1].wait_ready(900)
                urls = [server.url for server in servers]
                model = model_path if name == "transformers" else "served"
                # A few requests first, so one-time costs (first forward pass, allocations) are not measured.
                for url in urls:
                    warm_up = Plan.make(20, 0.5, 0.5, 99)
                    asyncio.run(run_load(url, warm_up, 4, args.max_tokens, False, 0, model=model))
                runs[name] = asyncio.run(
                    run_load(
                        urls,
                        plan,
                        args.concurrency,
                        args.max_tokens,
                        churn,
                        args.seed,
                        tuple(args.edit_interval),
                        model=model,
                    )
                )
                if name != "transformers":
                    runs[name]["mean_batch"] = mean_batch_sizes(urls)
                last_round = round_index == args.rounds - 1
                if churn and last_round and args.processes > 1 and args.propagation > 0:
                    propagation = asyncio.run(measure_propagation(urls, args.propagation))
            finally:
                for server in servers:
                    server.stop()
        rounds.append({name: runs[name] for name, _, _ in runs_of_a_round})

    proxy = measure_proxy(args, workdir, model_path, editor) if args.proxy_edits else None

    def ratio(over: str, under: str, key: str, under_key: str | None = None) -> float:
        return round(statistics.median(r[over][key] / r[under][under_key or key] for r in rounds), 3)

    def ratios(over: str, under: str) -> dict:
        return {
            "p50": ratio(over, under, "p50_ms"),
            "p95": ratio(over, under, "p95_ms"),
            "throughput": ratio(over, under, "throughput_rps"),
        }

    report: dict = {
        "config": {**vars(args), "workdir": str(workdir)},
        "rounds": rounds,
        "propagation": propagation,
    }
    if rounds:
        report["serac_over_base"] = {
            **ratios("serac", "base"),
            "p50_of_base_routed_answers": ratio("serac", "base", "p50_ms_base_routed", "p50_ms"),
            "p50_of_edit_routed_answers": ratio("serac", "base", "p50_ms_edit_routed", "p50_ms"),
        }
        if args.transformers_serve:
            report["serac_over_transformers"] = ratios("serac", "transformers")
            report["base_over_transformers"] = ratios("base", "transformers")
    report["proxy"] = proxy
    if rounds:
        print(
            f"{args.requests} requests per run, {args.concurrency} clients, {args.max_tokens} new tokens, "
            f"{args.processes} server process(es) per run, {args.rounds} round(s)"
        )
        print(
            f"{'round':<7}{'server':<14}{'errors':>8}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>8}{'edit writes':>13}"
            f"{'contradictions':>16}{'within bound':>14}{'routed to edit':>16}"
        )
    for round_index, runs in enumerate(rounds):
        for name, run in runs.items():
            print(
                f"{round_index:<7}{name:<14}{run['errors']:>8}{run['p50_ms']:>9}{run['p95_ms']:>9}"
                f"{run['throughput_rps']:>8}{run['edit_writes']:>13}"
                f"{run['contradictions'] if name == 'serac' else '-':>16}"
                f"{run['contradicting_only_within_staleness_bound'] if name == 'serac' else '-':>14}"
                f"{run['routed_to_edit']:>16}"
            )
    if rounds:
        misroutes = sum(
            r["serac"]["routed_to_another_slots_edit"] + r["serac"]["unrelated_routed_to_an_edit"]
            for r in rounds
        )
        over = report["serac_over_base"]
        print(
            f"serac / base (median over rounds): p50 {over['p50']}x, p95 {over['p95']}x, "
            f"throughput {over['throughput']}x, p50 of the answers routed to the base model "
            f"{over['p50_of_base_routed_answers']}x, to an edit {over['p50_of_edit_routed_answers']}x; answers routed to the wrong edit or unrelated questions "
            f"routed to an edit: {misroutes}"
        )
        for key in ("serac_over_transformers", "base_over_transformers"):
            if key in report:
                print(f"{key.replace('_', ' ')} (median over rounds): {report[key]}")
    if propagation is not None:
        print(
            f"edit propagation between processes ({propagation['add']['trials']} trials): an added edit is "
            f"routed by another process after {propagation['add']}; a removed one stops after "
            f"{propagation['remove']}; write errors {propagation['write_errors']}"
        )
    if proxy is not None:
        print(f"proxy with {proxy['stored_edits']} stored edits in front of transformers serve: {proxy}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
