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


def reading(batch, widths):
    """``batch`` with the number of tokens each of its forward passes reads per row recorded in ``widths``."""
    forward = batch._forward

    def recording(input_ids, *args):
        widths.append(input_ids.shape[1])
        return forward(input_ids, *args)

    batch._forward = recording
    return batch


def test_prompts_read_the_beginning_they_share_once_across_admissions(generator):
    system = "System: answer in one short line.\nUser: "
    jobs = [
        job(generator, system + question, 7)
        for question in ["Hi", "Why is the sky blue?", "?", "Name a bee."]
    ]
    expected = [alone(generator, item) for item in jobs]
    shared = len(generator.prompt_ids(completion_request(system)))
    prefix = SharedPrefix(minimum=8)
    widths: list[int] = []
    batch = reading(ContinuousBatch.for_request(generator, jobs[0].request, prefix), widths)
    finished = dict(batch.admit(jobs[:1], [0]))  # alone, with nothing before it: nothing shared yet
    finished.update(batch.step())
    finished.update(batch.admit(jobs[1:3], [1, 2]))  # shares the system line with each other and the first
    # Read whole (each in a pass of its own length: they differ more than a pass costs); no pass for the
    # beginning itself.
    assert widths[:2] == [len(jobs[0].prompt_ids), 1]
    assert sorted(widths[2:]) == sorted(len(item.prompt_ids) for item in jobs[1:3])
    assert prefix.beginnings == [jobs[1].prompt_ids[:shared]]  # kept from that reading
    while len(batch):
        finished.update(batch.step())
    # A later batch reads only what follows the kept beginning.
    widths.clear()
    batch = reading(ContinuousBatch.for_request(generator, jobs[0].request, prefix), widths)
    finished.update(batch.admit(jobs[3:], [3]))
    assert widths == [len(jobs[3].prompt_ids) - shared]
    while len(batch):
        finished.update(batch.step())
    assert [finished[index] for index in range(len(jobs))] == expected
    assert prefix.beginnings == [jobs[1].prompt_ids[:shared]]


def test_prompts_of_two_shapes_that_alternate_each_keep_their_beginning(generator):
    # As in a server answering in-context: prompts with an edit before the conversation and plain ones.
    plain = "System: answer in one short line.\nUser: "
    edited = "Fact: bees make honey in hives.\nUser: "
    questions = ["Hi", "Why is the sky blue?", "?", "Name a bee.", "Ok", "Go"]  # no two share a letter
    jobs = [
        job(generator, beginning + question, 6) for question in questions for beginning in (plain, edited)
    ]
    expected = [alone(generator, item) for item in jobs]
    lengths = [len(generator.prompt_ids(completion_request(beginning))) for beginning in (plain, edited)]
    prefix = SharedPrefix(minimum=8)
    finished, widths, admissions = {}, [], []
    # Admissions of one shape, of the other, and of both together (rows of different beginnings).
    for admitted in ([0, 2], [1, 3], [4], [5], [6, 7], [9, 8], [10, 11]):
        batch = reading(ContinuousBatch.for_request(generator, jobs[0].request, prefix), widths)
        finished.update(batch.admit([jobs[index] for index in admitted], admitted))
        admissions.append(widths[-1])
        while len(batch):
            finished.update(batch.step())
    assert [finished[index] for index in range(len(jobs))] == expected
    # Each beginning kept once, and alternating shapes do not push each other out.
    assert sorted(len(tokens) for tokens in prefix.beginnings) == sorted(lengths)
    # From the third admission on, every prompt reads only its question.
    assert admissions[2:] == [
        max(len(jobs[index].prompt_ids) - lengths[index % 2] for index in admitted)
        for admitted in ([4], [5], [6, 7], [9, 8], [10, 11])
    ]


def test_a_row_without_a_kept_beginning_joins_rows_with_one(generator):
    system = "System: answer in one short line.\nUser: "
    jobs = [
        job(generator, system + question, 6) for question in ["Hi", "Name a bee.", "Why is the sky blue?"]
    ] + [job(generator, "Why?", 6)]
    expected = [alone(generator, item) for item in jobs]
    prefix = SharedPrefix(minimum=8)
    batch = ContinuousBatch.for_request(generator, jobs[0].request, prefix)
    finished = dict(batch.admit(jobs[:2], [0, 1]))  # keeps the system line
    finished.update(batch.step())
    finished.update(batch.admit(jobs[2:], [2, 3]))  # one row reads it, one has nothing kept
    while len(batch):
        finished.update(batch.step())
    assert [finished[index] for index in range(len(jobs))] == expected
    assert len(prefix.beginnings) == 1


def test_kept_beginnings_stay_within_their_memory_bound(generator):
    beginnings = [f"Rule {letter}: {letter * 24}\nUser: " for letter in "ABC"]  # all of one length
    jobs = [job(generator, beginning + question, 3) for beginning in beginnings for question in ("Hi", "Go")]
    one = SharedPrefix(minimum=8)
    batch = ContinuousBatch.for_request(generator, jobs[0].request, one)
    batch.admit(jobs[:2], [0, 1])
    size = one.bytes  # one beginning
    assert size > 0
    prefix = SharedPrefix(minimum=8, max_bytes=int(2.5 * size))
    finished = {}
    for first in range(0, len(jobs), 2):
        batch = ContinuousBatch.for_request(generator, jobs[0].request, prefix)
        finished.update(batch.admit(jobs[first : first + 2], [first, first + 1]))
        while len(batch):
            finished.update(batch.step())
        assert prefix.bytes <= prefix.max_bytes
    # The two most recent kept, the oldest dropped.
    assert prefix.beginnings == [
        generator.prompt_ids(completion_request(beginning)) for beginning in beginnings[1:]
    ]
    assert [finished[index] for index in range(len(jobs))] == [alone(generator, item) for item in jobs]
    # A beginning larger than the bound on its own is not kept.
    small = SharedPrefix(minimum=8, max_bytes=size // 2)
    ContinuousBatch.for_request(generator, jobs[0].request, small).admit(jobs[:2], [0, 1])
    assert small.beginnings == [] and small.bytes == 0


def test_a_beginning_is_learnt_from_a_prompt_seen_dozens_of_prompts_before(generator):
    system = "System: answer in one short line.\nUser: "
    prefix = SharedPrefix(minimum=8)
    batch = ContinuousBatch.for_request(generator, completion_request("x"), prefix)
    batch.admit([job(generator, system + "Hi", 1)], ["first"])
    for index in range(40):  # prompts sharing no 8 first tokens with it, nor with each other
        batch.admit([job(generator, f"{index:02d} " + "abcdefghij"[index % 10] * 12, 1)], [index])
    assert prefix.beginnings == []
    batch.admit([job(generator, system + "Go", 1)], ["again"])
    assert prefix.beginnings == [generator.prompt_ids(completion_request(system))]


def test_a_prompt_with_nothing_kept_is_read_apart_from_prompts_that_read_a_token(generator):
    system = "System: answer in one short line.\nUser: "
    seen = [job(generator, system + "Name a bee.", 6) for _ in range(2)]  # its beginning gets kept
    jobs = [*seen, job(generator, system + "Name a bee.", 6), job(generator, PROMPTS[4], 6)]
    expected = [alone(generator, item) for item in jobs]
    prefix, widths = SharedPrefix(minimum=8), []
    batch = reading(ContinuousBatch.for_request(generator, jobs[0].request, prefix), widths)
    finished = dict(batch.admit(jobs[:2], [0, 1]))
    widths.clear()
    finished.update(batch.admit(jobs[2:], [2, 3]))
    # One pass, the whole of the other prompt (not both padded to the longer): the prompt read before has
    # all but its last token kept, and that token is read with the running rows' next ones.
    assert widths == [len(jobs[3].prompt_ids)]
    finished.update(batch.step())
    assert widths[1:] == [1] and len(batch) == 4
    while len(batch):
        finished.update(batch.step())
    assert [finished[index] for index in range(len(jobs))] == expected


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


def test_under_load_waiting_requests_join_together_and_none_waits_long(generator):
    # 8 rows running: one new request waits a few steps for others; two (a quarter) join at once.
    admissions: list[tuple[int, int]] = []  # (rows admitted, tokens the first row had then)
    steps: list[str] = []
    batcher = GenerationBatcher(
        object(), generator, on_batch=lambda route, size: admissions.append((size, len(steps)))
    )
    running = [completion_request(PROMPTS[4]) for _ in range(8)]
    late = [completion_request(PROMPTS[1]) for _ in range(3)]
    late_futures: list = []

    def submit_late(text):  # on the generation thread, between decoding steps of the first row
        steps.append(text)
        if len(steps) == 2:  # one request
            late_futures.append(batcher.submit(BaseJob(generator.prompt_ids(late[0]), late[0], 2)))
        if len(steps) == 12:  # two together
            for request in late[1:]:
                late_futures.append(batcher.submit(BaseJob(generator.prompt_ids(request), request, 2)))

    jobs = [BaseJob(generator.prompt_ids(request), request, 30) for request in running]
    with batcher._condition:  # all 8 start in one batch
        futures = [batcher.submit(jobs[0], on_text=submit_late)] + [batcher.submit(item) for item in jobs[1:]]
    try:
        results = [future.result(timeout=120) for future in futures]
        results += [future.result(timeout=120) for future in late_futures]
    finally:
        batcher.close()
    assert all(
        result.completion_tokens == 30 for result in results[:8]
    )  # the tiny model does not end it sooner
    assert results[8:] == [generator.generate(generator.prompt_ids(r), r, 2) for r in late]
    assert admissions[0] == (8, 0)
    # The lone request waited 3 steps for company (none came), then joined; the pair joined at the next step.
    assert admissions[1:] == [(1, 2 + batcher.admit_after_steps), (2, 12)]


def test_a_waiting_request_with_all_but_its_last_token_kept_joins_at_the_next_step(generator):
    # 8 rows of one prompt running (its beginning is kept from their reading); a ninth request with that prompt
    # needs no pass to join, so it does not wait for company as the lone request above.
    admissions: list[tuple[int, int]] = []
    steps: list[str] = []
    batcher = GenerationBatcher(
        object(), generator, on_batch=lambda route, size: admissions.append((size, len(steps)))
    )
    request = completion_request(PROMPTS[4])
    late: list = []

    def submit_late(text):
        steps.append(text)
        if len(steps) == 2:
            late.append(batcher.submit(BaseJob(generator.prompt_ids(request), request, 2)))

    jobs = [BaseJob(generator.prompt_ids(request), request, 12) for _ in range(8)]
    with batcher._condition:
        futures = [batcher.submit(jobs[0], on_text=submit_late)] + [batcher.submit(item) for item in jobs[1:]]
    try:
        results = [future.result(timeout=120) for future in futures]
        results += [future.result(timeout=120) for future in late]
    finally:
        batcher.close()
    assert admissions == [(8, 0), (1, 2)]
    assert results[-1] == generator.generate(generator.prompt_ids(request), request, 2)
    assert results[0] == generator.generate(generator.prompt_ids(request), request, 12)


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


class BlockingRouter(RecordingRouter):
    """Its first call waits until ``release`` is set."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Event()

    def answer_many(self, decisions, queries, max_new_tokens, stops, request=None, prompt_tokens=None):
        if not self.calls:
            self.started.set()
            assert self.release.wait(60), "the base model's batch stopped while the counterfactual model ran"
        return super().answer_many(decisions, queries, max_new_tokens, stops, request, prompt_tokens)


def test_the_base_batch_goes_on_while_the_counterfactual_model_answers(generator):
    router = BlockingRouter()
    batcher = GenerationBatcher(router, generator)
    base_request = completion_request(PROMPTS[4])
    base_job = BaseJob(generator.prompt_ids(base_request), base_request, 60)
    edit_request = completion_request(PROMPTS[1])
    decision = ScopeDecision(in_scope=True, edit_id=0, score=1.0)
    edit_futures: list = []
    pieces: list[str] = []

    def between_steps(text):  # on the generation thread, between steps of the base row
        pieces.append(text)
        if len(pieces) == 2:  # its call blocks until the base row has decoded 10 more tokens
            edit_futures.append(batcher.submit(EditJob(decision, "Hi", edit_request, 4)))
        if len(pieces) in (4, 5) and router.started.wait(10):  # these two wait for the blocked call
            edit_futures.append(batcher.submit(EditJob(decision, "Hi", edit_request, 4)))
        if len(pieces) == 12:
            router.release.set()

    try:
        base = batcher.submit(base_job, on_text=between_steps).result(timeout=120)
        answers = [future.result(timeout=60) for future in edit_futures]
    finally:
        router.release.set()
        batcher.close()
    assert base == generator.generate(base_job.prompt_ids, base_request, 60)
    assert [answer.text for answer in answers] == ["edited"] * 3
    # The two that arrived during the first call shared the next one.
    assert router.calls == [1, 2]
