"""Dynamic batching in local mode, and edit writes beside routing: concurrent requests share ``generate()``
calls and each still gets the answer it gets alone; a slow edit write does not hold routing back."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serac.serve import BaseModelGenerator  # noqa: E402
from serac.serve.batching import BaseJob, GenerationBatcher  # noqa: E402
from serac.serve.engine import GenerationJob  # noqa: E402
from serac.serve.protocol import parse_chat_request, parse_completion_request  # noqa: E402

from .conftest import make_tiny_llama  # noqa: E402
from .test_serve import (  # noqa: E402
    ADMIN,
    CITIZEN,
    KEY,
    SPORT,
    TargetCounterfactualModel,
    base_continuation,
    chat_tokenizer,  # noqa: F401  (module fixture used here)
    local_app,
    make_router,
    post_edits,
    serving,
)

#: Prompts of 1 to about 170 characters (one token each with the character tokenizer).
PROMPTS = [
    "?",
    "Hi",
    "Why is the sky blue?",
    "Name a prime number larger than ten, and say why it is prime.",
    "How do bees make honey? " * 7,
]


def completion_request(prompt, **fields):
    return parse_completion_request({"model": "tiny", "prompt": prompt, "temperature": 0, **fields})


class RecordingCounterfactualModel(TargetCounterfactualModel):
    """Answers with the edit's target and records how many queries each call answered."""

    def generate(self, edits, queries, **generation_kwargs):
        self.calls.append(len(queries))
        return super().generate(edits, queries, **generation_kwargs)


class GatedGenerate:
    """Wraps a model's ``generate()`` and records each call's batch size. The first call holds the
    generation thread until it and the jobs queued behind it make ``expected``: those must then share
    the calls after it."""

    def __init__(self, model):
        self.generate = model.generate
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.waiting = lambda: 0
        self.expected = 0

    def __call__(self, **kwargs):
        size = kwargs["input_ids"].shape[0]
        if not self.entered.is_set():
            self.entered.set()
            deadline = time.monotonic() + 60
            while size + self.waiting() < self.expected and time.monotonic() < deadline:
                time.sleep(0.01)
        self.sizes.append(size)
        return self.generate(**kwargs)


@pytest.fixture(scope="module")
def base_model(chat_tokenizer):  # noqa: F811
    return make_tiny_llama(chat_tokenizer, seed=0)


@pytest.fixture(scope="module")
def generator(base_model, chat_tokenizer):  # noqa: F811
    return BaseModelGenerator(base_model, chat_tokenizer)


# ---------------------------------------------------------------------------------------------- the generator
def test_a_batched_answer_is_token_for_token_the_answer_alone(generator, base_model, chat_tokenizer):  # noqa: F811
    requests = [completion_request(prompt) for prompt in PROMPTS]
    jobs = [GenerationJob(generator.prompt_ids(request), request, 12) for request in requests]
    assert len({len(job.prompt_ids) for job in jobs}) == len(PROMPTS)  # every row padded differently
    batched = generator.generate_many(jobs)
    for prompt, job, result in zip(PROMPTS, jobs, batched, strict=True):
        alone = generator.generate(job.prompt_ids, job.request, 12)
        assert result == alone
        # ... which is the base model's own generate() on that prompt alone.
        assert result.text == base_continuation(base_model, chat_tokenizer, prompt, max_new_tokens=12)


def test_prompts_read_their_common_beginning_once_with_the_same_answers(
    generator,
    base_model,
    chat_tokenizer,  # noqa: F811
):
    system = {"role": "system", "content": "You answer in a few words, and only what was asked."}
    requests = [
        parse_chat_request(
            {"model": "tiny", "messages": [system, {"role": "user", "content": prompt}], "temperature": 0}
        )
        for prompt in PROMPTS[:4] + [PROMPTS[4][:90]]  # within the tiny model's context of 256
    ]
    jobs = [GenerationJob(generator.prompt_ids(request), request, 12) for request in requests]
    shared = generator._shared_prefix_length(jobs)
    assert shared >= len("<system>" + system["content"])  # one token per character
    seen = []
    generate = base_model.generate
    base_model.generate = lambda **kwargs: seen.append(kwargs) or generate(**kwargs)
    try:
        batched = generator.generate_many(jobs)
    finally:
        del base_model.generate
    # One generate() call, given the keys and values of the common beginning for every row.
    (call,) = seen
    cache = call[generator._cache_argument]
    assert cache.get_seq_length() >= shared and call["input_ids"].shape[0] == len(requests)
    for request, job, result in zip(requests, jobs, batched, strict=True):
        assert result == generator.generate(job.prompt_ids, job.request, 12)
        rendered = chat_tokenizer.apply_chat_template(
            request.messages, tokenize=False, add_generation_prompt=True
        )
        assert result.text == base_continuation(base_model, chat_tokenizer, rendered, max_new_tokens=12)


def test_each_row_of_a_batch_keeps_its_budget_stop_strings_and_text_stream(generator):
    full = {
        prompt: generator.generate(
            generator.prompt_ids(completion_request(prompt)), completion_request(prompt), 12
        )
        for prompt in PROMPTS
    }
    budgets = [3, 12, 7, 1, 12]
    stops = [[], [], [], [], [full[PROMPTS[4]].text[5:7]]]
    streamed = [[] for _ in PROMPTS]
    requests = [completion_request(p, stop=s or None) for p, s in zip(PROMPTS, stops, strict=True)]
    jobs = [
        GenerationJob(generator.prompt_ids(request), request, budget, on_text=streamed[index].append)
        for index, (request, budget) in enumerate(zip(requests, budgets, strict=True))
    ]
    results = generator.generate_many(jobs)
    for index, (job, result) in enumerate(zip(jobs, results, strict=True)):
        assert result == generator.generate(job.prompt_ids, job.request, job.max_new_tokens)
        assert "".join(streamed[index]) == result.text
    assert results[0].text == full[PROMPTS[0]].text[:3] and results[0].finish_reason == "length"
    assert results[3].completion_tokens == 1
    cut = full[PROMPTS[4]].text
    assert results[4].text == cut[: cut.index(stops[4][0])] and results[4].finish_reason == "stop"


def test_a_cancelled_row_stops_alone(generator):
    requests = [completion_request(prompt) for prompt in PROMPTS[1:4]]
    cancelled = threading.Event()
    pieces = []

    def cancel_after_two_characters(text):
        pieces.append(text)
        if len("".join(pieces)) >= 2:
            cancelled.set()

    jobs = [GenerationJob(generator.prompt_ids(request), request, 12) for request in requests]
    jobs[1] = GenerationJob(jobs[1].prompt_ids, jobs[1].request, 12, cancel_after_two_characters, cancelled)
    results = generator.generate_many(jobs)
    assert results[1].completion_tokens < 12
    for index in (0, 2):
        assert results[index] == generator.generate(jobs[index].prompt_ids, jobs[index].request, 12)


def test_the_batcher_groups_waiting_jobs_by_sampling_settings(generator, base_model):
    gate = GatedGenerate(base_model)
    batcher = GenerationBatcher(make_router_stub(), generator, max_batch_size=3, continuous=False)
    gate.waiting, gate.expected = lambda: batcher.waiting, 7
    base_model.generate = gate
    try:
        greedy = [completion_request(prompt) for prompt in PROMPTS]
        sampled = completion_request(PROMPTS[2], temperature=0.8)
        seeded = completion_request(PROMPTS[2], temperature=0.8, seed=7)
        jobs = [BaseJob(generator.prompt_ids(request), request, 4) for request in [*greedy, sampled, seeded]]
        futures = [batcher.submit(jobs[0])]
        assert gate.entered.wait(timeout=60)
        futures += [batcher.submit(job) for job in jobs[1:]]
        results = [future.result(timeout=120) for future in futures]
    finally:
        del base_model.generate
        batcher.close()
    # The first job alone (nobody was waiting); then the six queued behind it: four greedy ones in calls of
    # at most three, the sampled one alone (other settings), the seeded one alone (its own random state).
    assert gate.sizes == [1, 3, 1, 1, 1]
    for job, result in zip(jobs[:5], results[:5], strict=True):
        assert result == generator.generate(job.prompt_ids, job.request, 4)
    assert batcher.batches == 5 and batcher.largest_batch == 3


def test_a_batch_about_to_start_waits_for_a_request_on_its_way(generator, base_model):
    sizes, generate = [], base_model.generate

    def slow_first_call(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if len(sizes) == 1:
            time.sleep(2.0)  # a pass of 2 s: the next batch may wait up to a quarter of it
        return generate(**kwargs)

    batcher = GenerationBatcher(make_router_stub(), generator, max_gather_s=1.0, continuous=False)
    base_model.generate = slow_first_call
    try:
        requests = [completion_request(prompt) for prompt in PROMPTS[:3]]
        jobs = [BaseJob(generator.prompt_ids(request), request, 4) for request in requests]
        batcher.submit(jobs[0]).result(timeout=60)
        # One request is submitted while another is still on its way (being routed): they share a call.
        arrival = batcher.arrival()
        first = batcher.submit(jobs[1])
        time.sleep(0.05)
        second = batcher.submit(jobs[2])
        arrival.done()
        arrival.done()  # counted once
        results = [first.result(timeout=60), second.result(timeout=60)]
        # Without a request on its way, a batch starts at once.
        batcher.submit(jobs[1]).result(timeout=60)
    finally:
        del base_model.generate
        batcher.close()
    assert sizes == [1, 2, 1]
    assert results == [generator.generate(job.prompt_ids, job.request, 4) for job in jobs[1:]]


def make_router_stub():
    """The batcher needs a router only for edit jobs; these tests send none."""
    return object()


# ---------------------------------------------------------------------------------------------- the server
@pytest.fixture()
def batching_server(chat_tokenizer, embedder):  # noqa: F811
    """Local mode with its own base model (whose generate() the tests wrap) and a recording counterfactual
    model; two edits stored."""
    model = make_tiny_llama(chat_tokenizer, seed=0)
    counterfactual = RecordingCounterfactualModel(make_tiny_llama(chat_tokenizer, seed=3), chat_tokenizer)
    counterfactual.calls = []
    gate = GatedGenerate(model)
    router = make_router(embedder, counterfactual, chat_tokenizer)
    app = local_app(model, chat_tokenizer, router, admin_token=ADMIN, api_keys=(KEY,), batching="dynamic")
    gate.waiting = lambda: app.state.serac.batcher.waiting
    with serving(app) as url:
        ids = post_edits(url, [CITIZEN, SPORT]).json()["ids"]
        model.generate = gate
        yield url, app, model, gate, counterfactual, ids


async def ask(async_client, question, stream):
    messages = [{"role": "user", "content": question}]
    if not stream:
        response = await async_client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, temperature=0
        )
        return response.choices[0].message.content, response.serac
    chunks = [
        chunk
        async for chunk in await async_client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True
        )
    ]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[0].serac


def ask_all(url, questions, first_alone_until=None):
    """Ask every question at once; with ``first_alone_until`` (an event), the first question first, the
    others once the event is set."""

    async def run():
        async with openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120) as async_client:
            first = None
            if first_alone_until is not None:
                first = asyncio.ensure_future(ask(async_client, questions[0], False))
                deadline = time.monotonic() + 60
                while not first_alone_until.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            rest = questions[1:] if first is not None else questions
            answers = await asyncio.gather(*(ask(async_client, q, i % 2 == 1) for i, q in enumerate(rest)))
            return ([await first] if first is not None else []) + list(answers)

    return asyncio.run(run())


def test_concurrent_requests_share_generate_calls_with_their_own_answers(batching_server, chat_tokenizer):  # noqa: F811
    url, app, model, gate, counterfactual, _ = batching_server
    questions = [PROMPTS[index % len(PROMPTS)] + f" ({index})" for index in range(10)]
    gate.expected = len(questions)
    # The first request alone first: the others, sent once its call has started, cannot reach that call
    # (sent together, all ten could be routed and queued before the generation thread takes the first).
    answers = ask_all(url, questions, first_alone_until=gate.entered)
    # The first call held the generation thread until the other nine were queued: they shared one call.
    assert gate.sizes == [1, len(questions) - 1]
    for question, (text, routing) in zip(questions, answers, strict=True):
        rendered = chat_tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        assert routing["route"] == "base_model"
        assert text == base_continuation(model, chat_tokenizer, rendered)
    assert app.state.serac.batcher.largest_batch == max(gate.sizes[:2])
    metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
    assert 'serac_generation_batch_size_count{route="base_model"} 2.0' in metrics


def test_in_scope_requests_share_a_call_of_the_counterfactual_model(batching_server):
    url, app, model, gate, counterfactual, (citizen_id, sport_id) = batching_server
    # A base-model request first holds the generation thread until the six in-scope ones are queued.
    questions = ["Why is the sky blue?"] + [CITIZEN["prompt"], "LeBron James plays the sport of"] * 3
    gate.expected = len(questions)
    counterfactual.calls.clear()
    answers = ask_all(url, questions, first_alone_until=gate.entered)
    assert gate.sizes == [1]
    assert counterfactual.calls == [len(questions) - 1]
    for (text, routing), expected in zip(
        answers[1:], [("Croatia", citizen_id), ("football", sport_id)] * 3, strict=True
    ):
        assert (text, routing["route"], routing["edit_id"]) == (expected[0], "edit", expected[1])


# ---------------------------------------------------------------------------------------------- edit writes
def test_routing_goes_on_while_an_edit_write_is_slow(batching_server, embedder, monkeypatch):
    url, app, model, gate, counterfactual, (citizen_id, _) = batching_server
    slow_text = "Who wrote the novel Moby-Dick?"
    in_write, release = threading.Event(), threading.Event()
    encode = embedder.encode

    def slow_encode(texts, *args, **kwargs):
        if any(slow_text in text for text in ([texts] if isinstance(texts, str) else texts)):
            in_write.set()
            release.wait(timeout=60)
        return encode(texts, *args, **kwargs)

    monkeypatch.setattr(embedder, "encode", slow_encode)
    with ThreadPoolExecutor(1) as pool:
        write = pool.submit(post_edits, url, [{"prompt": slow_text, "target": "Jane Austen"}])
        assert in_write.wait(timeout=60)
        # The write is inside its embedding; routing (which embeds with the same embedder) goes on.
        started = time.monotonic()
        text, routing = ask_all(url, [CITIZEN["prompt"]])[0]
        assert (text, routing["edit_id"]) == ("Croatia", citizen_id)
        assert ask_all(url, ["Why is the sky blue?"])[0][1]["route"] == "base_model"
        assert not write.done() and time.monotonic() - started < 60
        release.set()
        response = write.result(timeout=60)
    assert response.status_code == 200
    (new_id,) = response.json()["ids"]
    text, routing = ask_all(url, [slow_text])[0]
    assert (text, routing["edit_id"]) == ("Jane Austen"[:8], new_id)  # 8 tokens: the budget


def test_routing_goes_on_while_a_write_looks_for_the_fact_it_supersedes(batching_server, monkeypatch):
    # After storing an edit, a write looks for older edits of the same fact (the scope classifier's passes
    # over candidates): that must not hold the store's lock, which routing reads under.
    url, app, model, gate, counterfactual, (citizen_id, _) = batching_server
    classifier = app.state.serac.router.memory.scope_classifier
    in_lookup, release = threading.Event(), threading.Event()
    same_fact = classifier.same_fact

    def slow_same_fact(*args, **kwargs):
        in_lookup.set()
        release.wait(timeout=20)
        return same_fact(*args, **kwargs)

    monkeypatch.setattr(classifier, "same_fact", slow_same_fact)
    with ThreadPoolExecutor(1) as pool:
        write = pool.submit(
            post_edits, url, [{"prompt": "Who wrote the novel Moby-Dick?", "target": "Jane Austen"}]
        )
        assert in_lookup.wait(timeout=60)
        started = time.monotonic()
        text, routing = ask_all(url, [CITIZEN["prompt"]])[0]
        elapsed = time.monotonic() - started
        lookup_still_running = not write.done()
        release.set()
        response = write.result(timeout=60)
    assert (text, routing["edit_id"]) == ("Croatia", citizen_id)
    assert lookup_still_running and elapsed < 10
    assert response.status_code == 200
