"""Continuous batching in local mode: prompts join the running batch between decoding steps, ended rows
leave at once, and every row still gets the answer it gets alone."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("fastapi")

from serac.scope import ScopeDecision  # noqa: E402
from serac.serve import BaseModelGenerator  # noqa: E402
from serac.serve.batching import BaseJob, EditJob, GenerationBatcher  # noqa: E402
from serac.serve.continuous import ContinuousBatch, SharedPrefix, continuous_decoding  # noqa: E402
from serac.serve.engine import GenerationJob, GenerationResult  # noqa: E402
from serac.serve.protocol import parse_completion_request  # noqa: E402

from .conftest import make_char_tokenizer, make_tiny_llama, make_tiny_t5  # noqa: E402
from .test_serve_batching import PROMPTS, completion_request  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="module")
def generator(tokenizer):
    return BaseModelGenerator(make_tiny_llama(tokenizer, seed=0), tokenizer)


def job(generator, prompt, max_new_tokens, on_text=None, cancelled=None, **fields):
    request = completion_request(prompt, **fields)
    return GenerationJob(generator.prompt_ids(request), request, max_new_tokens, on_text, cancelled)


def alone(generator, job):
    return generator.generate(job.prompt_ids, job.request, job.max_new_tokens)


def test_rows_joining_between_steps_get_the_answers_they_get_alone(generator):
    pieces: list[str] = []
    jobs = [
        job(generator, PROMPTS[2], 9),
        job(generator, PROMPTS[3], 12, on_text=pieces.append),
        job(generator, PROMPTS[0], 6),  # shorter than the running rows: padded on the left
        job(generator, PROMPTS[4], 10),  # longer: the running rows are padded on the left
        job(generator, PROMPTS[1], 1),  # its budget ends it at admission
        job(generator, PROMPTS[2], 8, stop=["y"]),
    ]
    expected = [alone(generator, item) for item in jobs]
    assert any(result.finish_reason == "stop" for result in expected[-1:])  # the stop string is met
    pieces.clear()
    batch = ContinuousBatch.for_request(generator, jobs[0].request)
    assert batch is not None
    finished = dict(batch.admit(jobs[:2], [0, 1]))
    for _ in range(3):
        finished.update(batch.step())
    assert len(batch) == 2
    finished.update(batch.admit(jobs[2:4], [2, 3]))
    finished.update(batch.step())
    finished.update(batch.admit(jobs[4:], [4, 5]))
    assert 4 in finished  # ended at once, without waiting for a step
    order = []
    while len(batch):
        ended = batch.step()
        order += [tag for tag, _ in ended]
        finished.update(ended)
    assert [finished[index] for index in range(len(jobs))] == expected
    assert "".join(pieces) == expected[1].text  # streamed as it was decoded
    # Rows leave as they end: the shortest budgets first, not all together at the end.
    assert order.index(2) < order.index(3)


def test_prompts_read_the_beginning_they_share_once_across_admissions(generator):
    system = "System: answer in one short line.\nUser: "
    jobs = [
        job(generator, system + question, 7)
        for question in ["Hi", "Why is the sky blue?", "?", "Name a bee."]
    ]
    expected = [alone(generator, item) for item in jobs]
    prefix = SharedPrefix(minimum=8)
    computed = []

    def counting(batch):
        states = batch._prefix_states

        def compute(tokens):
            computed.append(len(tokens))
            return states(tokens)

        batch._prefix_states = compute
        return batch

    batch = counting(ContinuousBatch.for_request(generator, jobs[0].request, prefix))
    finished = dict(batch.admit(jobs[:1], [0]))  # alone, with nothing before it: nothing shared yet
    finished.update(batch.step())
    finished.update(batch.admit(jobs[1:3], [1, 2]))  # shares the system line with each other and the first
    finished.update(batch.step())
    while len(batch):
        finished.update(batch.step())
    # A later batch reuses the kept beginning.
    batch = counting(ContinuousBatch.for_request(generator, jobs[0].request, prefix))
    finished.update(batch.admit(jobs[3:], [3]))
    while len(batch):
        finished.update(batch.step())
    assert [finished[index] for index in range(len(jobs))] == expected
    assert computed == [len(generator.prompt_ids(jobs[0].request)) - 2]  # once: the system line, "User: "
    assert prefix.tokens == jobs[1].prompt_ids[: computed[0]]


def test_a_cancelled_row_leaves_and_the_others_go_on(generator):
    cancelled = threading.Event()
    pieces: list[str] = []

    def cancel_after_first(text):
        pieces.append(text)
        cancelled.set()

    jobs = [
        job(generator, PROMPTS[2], 10, on_text=cancel_after_first, cancelled=cancelled),
        job(generator, PROMPTS[3], 10),
    ]
    expected = alone(generator, jobs[1])
    batch = ContinuousBatch.for_request(generator, jobs[0].request)
    finished = dict(batch.admit(jobs, ["cancelled", "other"]))
    while len(batch):
        finished.update(batch.step())
    assert finished["other"] == expected
    assert finished["cancelled"].completion_tokens < 10


def test_what_continuous_decoding_covers(generator, tokenizer):
    model = generator.model
    greedy = continuous_decoding(
        model, {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    assert greedy is not None and not greedy.do_sample and len(greedy.processors) == 0
    sampled = continuous_decoding(model, {"do_sample": True, "temperature": 0.7, "top_p": 0.9})
    assert sampled is not None and sampled.do_sample
    assert {type(p).__name__ for p in sampled.processors} >= {"TemperatureLogitsWarper", "TopPLogitsWarper"}
    # A processor that reads the tokens so far, an encoder-decoder: generate() answers them.
    assert continuous_decoding(model, {"repetition_penalty": 1.3}) is None
    assert continuous_decoding(make_tiny_t5(tokenizer), {}) is None


def test_sampled_rows_draw_from_the_processed_distribution(generator):
    # top_k=1 leaves one token: sampling must then give the greedy answer.
    decoding = continuous_decoding(generator.model, {"do_sample": True, "temperature": 0.9, "top_k": 1})
    batch = ContinuousBatch(generator, decoding)
    jobs = [job(generator, prompt, 6) for prompt in PROMPTS[1:4]]
    finished = dict(batch.admit(jobs, [0, 1, 2]))
    while len(batch):
        finished.update(batch.step())
    assert [finished[index] for index in range(3)] == [alone(generator, item) for item in jobs]


# ---------------------------------------------------------------------------------------------- the batcher
def test_a_request_arriving_mid_batch_joins_it_and_is_answered_before_it_ends(generator):
    batcher = GenerationBatcher(object(), generator)
    long_request, short_request = completion_request(PROMPTS[4]), completion_request(PROMPTS[1])
    long_job = BaseJob(generator.prompt_ids(long_request), long_request, 60)
    short_job = BaseJob(generator.prompt_ids(short_request), short_request, 3)
    order: list[str] = []
    submitted: list = []

    def submit_short_once(_text):  # on the generation thread, while the long answer is being decoded
        if not submitted:
            future = batcher.submit(short_job)
            future.add_done_callback(lambda _: order.append("short"))
            submitted.append(future)

    try:
        long_future = batcher.submit(long_job, on_text=submit_short_once)
        long_future.add_done_callback(lambda _: order.append("long"))
        long_result = long_future.result(timeout=120)
        short_result = submitted[0].result(timeout=120)
    finally:
        batcher.close()
    assert order == ["short", "long"]
    assert long_result.completion_tokens == 60  # the tiny model does not end it sooner
    assert long_result == generator.generate(long_job.prompt_ids, long_request, 60)
    assert short_result == generator.generate(short_job.prompt_ids, short_request, 3)
    assert batcher.largest_batch == 2


def test_an_error_mid_batch_fails_its_requests_and_the_next_batch_runs(generator):
    batcher = GenerationBatcher(object(), generator)
    model, calls = generator.model, []
    forward = model.forward

    def failing_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the device went away")
        return forward(*args, **kwargs)

    requests = [completion_request(prompt) for prompt in PROMPTS[1:3]]
    jobs = [BaseJob(generator.prompt_ids(request), request, 8) for request in requests]
    model.forward = failing_forward
    try:
        futures = [batcher.submit(item) for item in jobs]
        for future in futures:
            with pytest.raises(RuntimeError, match="went away"):
                future.result(timeout=60)
        del model.forward
        assert batcher.submit(jobs[0]).result(timeout=60) == generator.generate(
            jobs[0].prompt_ids, requests[0], 8
        )
    finally:
        if "forward" in vars(model):
            del model.forward
        batcher.close()


def test_a_model_continuous_batching_does_not_cover_is_batched_per_generate_call(tokenizer):
    model = make_tiny_llama(tokenizer, seed=1)
    model.generation_config.repetition_penalty = 1.3  # a processor that reads the tokens so far
    generator = BaseModelGenerator(model, tokenizer)
    calls = []
    generate = model.generate

    def counting_generate(**kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(**kwargs)

    batcher = GenerationBatcher(object(), generator)
    model.generate = counting_generate
    try:
        request = parse_completion_request(
            {"model": "tiny", "prompt": PROMPTS[2]}
        )  # the checkpoint's settings
        result = batcher.submit(BaseJob(generator.prompt_ids(request), request, 5)).result(timeout=60)
    finally:
        del model.generate
        batcher.close()
    assert calls == [1]
    assert result.completion_tokens == 5


class RecordingRouter:
    """Answers edit-route jobs with a fixed text and records how many each call answered."""

    def __init__(self):
        self.calls: list[int] = []

    def answer_many(self, decisions, queries, max_new_tokens, stops, request=None, prompt_tokens=None):
        self.calls.append(len(queries))
        return [GenerationResult("edited", "stop", 0, 1) for _ in queries]


def test_edit_requests_arriving_during_a_batch_gather_for_one_call(generator):
    router = RecordingRouter()
    batcher = GenerationBatcher(router, generator)
    base_request = completion_request(PROMPTS[4])
    base_job = BaseJob(generator.prompt_ids(base_request), base_request, 60)
    edit_request = completion_request(PROMPTS[1])
    decision = ScopeDecision(in_scope=True, edit_id=0, score=1.0)
    edit_futures: list = []

    def submit_edits(_text):  # on the generation thread, between steps of the base row
        if len(edit_futures) < 2:
            edit_futures.append(batcher.submit(EditJob(decision, "Hi", edit_request, 4)))

    try:
        batcher.submit(base_job, on_text=submit_edits).result(timeout=120)
        answers = [future.result(timeout=60) for future in edit_futures]
    finally:
        batcher.close()
    assert [answer.text for answer in answers] == ["edited", "edited"]
    # Submitted a step apart, they shared one call of the counterfactual model.
    assert router.calls == [2]
