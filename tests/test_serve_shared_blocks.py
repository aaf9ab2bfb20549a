"""A trained counterfactual model that shares the base model's lower blocks decodes its rows inside the base
model's continuous batch, and answers exactly as it does alone."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

pytest.importorskip("fastapi")

from transformers import DynamicCache, LogitsProcessorList  # noqa: E402

from serac.counterfactual import AnswerCopy, CounterfactualConfig, CounterfactualModel  # noqa: E402
from serac.edits import Edit  # noqa: E402
from serac.scope import ScopeDecision  # noqa: E402
from serac.serve import BaseModelGenerator  # noqa: E402
from serac.serve.batching import BaseJob, EditJob, GenerationBatcher, SharedCounterfactual  # noqa: E402
from serac.serve.continuous import ContinuousBatch  # noqa: E402
from serac.serve.engine import CounterfactualRow, GenerationJob  # noqa: E402
from serac.serve.towers import TwoTowers, shared_depth  # noqa: E402

from .conftest import make_tiny_llama, make_tiny_t5  # noqa: E402
from .test_serve import (  # noqa: E402
    CITIZEN,
    chat,
    chat_tokenizer,  # noqa: F401  (module fixture used here)
    local_app,
    make_router,
    post_edits,
    serving,
)
from .test_serve_batching import PROMPTS, completion_request  # noqa: E402

EDITS = [
    Edit(prompt="Who leads the club?", target="Ann Lee"),
    Edit(prompt="{} is a citizen of", subject="Ellie Kemper", target="Croatia"),
    Edit.from_statement("The tower is 90 metres tall."),
]


def fine_tuned_top(model, blocks=1, seed=7):
    """``model`` with its top ``blocks`` decoder blocks trained apart (new random weights), as the default
    recipe trains its counterfactual model's top blocks only."""
    tuned = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in tuned.model.layers[-blocks:]:
            for parameter in block.parameters():
                parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return tuned


def low_rank_top(model, blocks=1, rank=2, seed=7):
    """``model`` with rank-``rank`` updates of its top ``blocks`` blocks' linear layers and new norm gains, as
    a counterfactual model trained with ``low_rank`` differs from its base model."""
    tuned = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in tuned.model.layers[-blocks:]:
            for module in block.modules():
                if isinstance(module, torch.nn.Linear):
                    rows, columns = module.weight.shape
                    up = torch.randn(rows, rank, generator=generator)
                    module.weight.add_(0.5 * up @ torch.randn(rank, columns, generator=generator))
                elif hasattr(module, "weight") and module.weight.dim() == 1:
                    module.weight.add_(0.3 * torch.randn(module.weight.shape, generator=generator))
    return tuned


class CountingCounterfactualModel(CounterfactualModel):
    """Counts the calls of its own ``generate()`` (the counterfactual thread's path)."""

    def generate(self, edits, queries, **generation_kwargs):
        self.calls += 1
        return super().generate(edits, queries, **generation_kwargs)


@pytest.fixture(scope="module")
def base_model(chat_tokenizer):  # noqa: F811
    return make_tiny_llama(chat_tokenizer, seed=0)


def counterfactual_for(base_model, tokenizer, **config):
    model = CountingCounterfactualModel(
        fine_tuned_top(base_model), tokenizer, CounterfactualConfig(max_new_tokens=12, **config)
    )
    model.calls = 0
    return model


def test_shared_depth_is_the_blocks_below_those_trained_apart(base_model, chat_tokenizer):  # noqa: F811
    tuned = fine_tuned_top(base_model)
    assert shared_depth(base_model, tuned) == 1
    assert shared_depth(base_model, tuned.to(torch.bfloat16)) == 1  # compared in the counterfactual's dtype
    assert shared_depth(base_model, make_tiny_llama(chat_tokenizer, seed=3)) is None  # trained whole
    embedded = copy.deepcopy(tuned)
    with torch.no_grad():
        embedded.model.embed_tokens.weight.add_(1.0)
    assert shared_depth(base_model, embedded) is None  # an embedding of its own
    assert shared_depth(base_model, fine_tuned_top(base_model, blocks=2)) is None  # no block shared
    assert shared_depth(base_model, make_tiny_t5(chat_tokenizer)) is None
    with pytest.raises(ValueError, match="no 3 shared blocks"):
        TwoTowers(base_model, tuned, 3)


@pytest.mark.parametrize(
    ("dtype", "low_rank"), [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)]
)
def test_each_row_gets_its_own_models_logits_and_the_base_model_is_left_as_it_was(
    base_model,
    chat_tokenizer,  # noqa: F811
    dtype,
    low_rank,
):
    # In bfloat16 (--counterfactual-dtype) the counterfactual rows' top blocks compute in it, the shared
    # lower blocks in the base model's float32. With low-rank updates of the top blocks, the counterfactual
    # rows go through the base model's top blocks plus the updates.
    tuned = (low_rank_top if low_rank else fine_tuned_top)(base_model).to(dtype)
    tolerance = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 0.1, "rtol": 0.05}
    towers = TwoTowers(base_model, tuned, shared_depth(base_model, tuned))
    assert towers.low_rank == low_rank
    blocks, names = list(base_model.model.layers), set(base_model.state_dict())
    modules = list(base_model.modules())
    prompts = [
        chat_tokenizer(text)["input_ids"] for text in ("Fact: one\nQ", "Hello there", "Fact: two!\nQ:")
    ]
    sides = [True, False, True]
    width = max(len(prompt) for prompt in prompts)
    ids = torch.tensor([[0] * (width - len(prompt)) + prompt for prompt in prompts])
    mask = torch.tensor([[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts])
    cache = DynamicCache(config=base_model.config)
    steps = []
    with torch.no_grad():
        with towers.rows(sides):
            logits = base_model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                cache=cache,
            ).logits[:, -1]
        steps.append(logits)
        for _ in range(2):
            tokens = steps[-1].argmax(-1)
            ids = torch.cat([ids, tokens[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            with towers.rows(sides):
                steps.append(
                    base_model(
                        input_ids=tokens[:, None],
                        attention_mask=mask,
                        position_ids=mask.sum(-1, keepdim=True) - 1,
                        cache=cache,
                    ).logits[:, -1]
                )
        for row, (prompt, side) in enumerate(zip(prompts, sides, strict=True)):
            model = tuned if side else base_model
            alone = model(input_ids=ids[row : row + 1, width - len(prompt) :]).logits[0]
            for step, logits in enumerate(steps):
                expected = alone[len(prompt) - 1 + step]
                torch.testing.assert_close(logits[row], expected.float(), **tolerance)
        # The two models' answers differ, so a row on the wrong side would show.
        assert not torch.allclose(
            tuned(input_ids=ids[:1]).logits.float(), base_model(input_ids=ids[:1]).logits, **tolerance
        )
    assert list(base_model.model.layers) == blocks
    assert list(base_model.modules()) == modules
    assert set(base_model.state_dict()) == names
    with towers.rows([False, False]):  # no counterfactual row: the base model as it is
        assert list(base_model.model.layers) == blocks


def test_a_counterfactual_row_copies_its_edits_answer_once_begun(base_model, chat_tokenizer):  # noqa: F811
    counterfactual = counterfactual_for(base_model, chat_tokenizer, copy_answer_after=2)
    generator = BaseModelGenerator(base_model, chat_tokenizer)
    towers = TwoTowers(base_model, counterfactual.model, 1)
    prompt = counterfactual.row_inputs(EDITS[0], "Who leads it?")[0]
    with torch.no_grad():
        free = counterfactual.model.generate(
            torch.tensor([prompt]), max_new_tokens=3, do_sample=False, pad_token_id=0
        )[0, len(prompt) :].tolist()
    copied = chat_tokenizer("QZ", add_special_tokens=False)["input_ids"]
    writings = [free[:2] + copied]  # the model writes the first two tokens by itself, then copies
    request = completion_request("x", temperature=0)
    jobs = [
        GenerationJob(prompt, request, 8, counterfactual=CounterfactualRow(writings, 2)),
        GenerationJob(generator.prompt_ids(completion_request(PROMPTS[0])), request, 8),
    ]
    batch = ContinuousBatch.for_request(generator, request, towers=towers)
    finished = dict(batch.admit(jobs, [0, 1]))
    while len(batch):
        finished.update(batch.step())
    processors = LogitsProcessorList([AnswerCopy(writings, len(prompt), 2)])
    with torch.no_grad():
        expected = counterfactual.model.generate(
            torch.tensor([prompt]),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
            logits_processor=processors,
        )[0, len(prompt) :]
    expected_text = chat_tokenizer.decode(expected, skip_special_tokens=True).strip().split("\n")[0].strip()
    assert finished[0].text == expected_text
    assert chat_tokenizer.decode(free[:2] + copied) in chat_tokenizer.decode(expected)  # the copy happened
    assert finished[1] == generator.generate(jobs[1].prompt_ids, jobs[1].request, 8)


def test_counterfactual_rows_in_the_base_batch_answer_as_the_counterfactual_model_does(
    base_model,
    chat_tokenizer,  # noqa: F811
    embedder,
):
    counterfactual = counterfactual_for(base_model, chat_tokenizer)
    router = make_router(embedder, counterfactual, chat_tokenizer)
    generator = BaseModelGenerator(base_model, chat_tokenizer)
    shared = SharedCounterfactual.for_models(generator, counterfactual)
    assert shared is not None and shared.towers.depth == 1
    routes: list[tuple[str, int]] = []
    batcher = GenerationBatcher(
        router, generator, shared=shared, on_batch=lambda route, size: routes.append((route, size))
    )
    greedy = completion_request("x", temperature=0)
    edit_jobs = [
        EditJob(ScopeDecision(True, index, 1.0, edit), query, greedy, budget)
        for index, (edit, query, budget) in enumerate(
            [
                (EDITS[0], "Who leads the club now?", 6),
                (EDITS[1], "Where is Ellie Kemper a citizen?", 2),  # cut: "length"
                (EDITS[2], "How tall is the tower?", 10),
                (EDITS[1], "Ellie Kemper's country?", 10),
            ]
        )
    ]
    stopped = completion_request("x", temperature=0, stop=["e"])
    edit_jobs.append(EditJob(ScopeDecision(True, 0, 1.0, EDITS[0]), "Who leads?", stopped, 10))
    base_jobs = [
        BaseJob(generator.prompt_ids(completion_request(prompt)), greedy, 9) for prompt in PROMPTS[:4]
    ]
    expected = [
        router.answer(job.decision, job.query, job.max_new_tokens, job.request.stop, request=job.request)
        for job in edit_jobs
    ] + [generator.generate(job.prompt_ids, job.request, job.max_new_tokens) for job in base_jobs]
    assert counterfactual.calls == len(edit_jobs)
    assert {result.finish_reason for result in expected[:2]} == {"stop", "length"}
    counterfactual.calls = 0
    streamed: dict[int, list[str]] = {}
    start = threading.Barrier(len(edit_jobs) + len(base_jobs))

    def submit(index, job):
        start.wait(10)
        return batcher.submit(job, on_text=streamed.setdefault(index, []).append)

    try:
        jobs = [*edit_jobs, *base_jobs]
        threads_futures: list = [None] * len(jobs)

        def run(index, job):
            threads_futures[index] = submit(index, job)

        threads = [threading.Thread(target=run, args=(index, job)) for index, job in enumerate(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        answers = [future.result(timeout=60) for future in threads_futures]
    finally:
        batcher.close()
    assert answers == expected
    assert counterfactual.calls == 0  # no call of the counterfactual model: its rows decoded in the batch
    assert sum(size for route, size in routes if route == "edit") == len(edit_jobs)
    for index, answer in enumerate(answers[: len(edit_jobs)]):
        assert "".join(streamed[index]) == answer.text  # sent once final


def test_requests_the_batch_cannot_decode_alike_go_to_the_counterfactual_thread(
    base_model,
    chat_tokenizer,  # noqa: F811
    embedder,
):
    counterfactual = counterfactual_for(base_model, chat_tokenizer)
    generator = BaseModelGenerator(base_model, chat_tokenizer)
    shared = SharedCounterfactual.for_models(generator, counterfactual)
    decision = ScopeDecision(True, 0, 1.0, EDITS[0])
    assert shared.job(EditJob(decision, "Who?", completion_request("x", temperature=0), 4)) is not None
    unset = completion_request("x", temperature=None)  # each model's own generation settings
    assert shared.job(EditJob(decision, "Who?", unset, 4)) is not None  # both greedy
    sampled = completion_request("x", temperature=0.7, top_p=0.9)
    assert shared.job(EditJob(decision, "Who?", sampled, 4)) is not None
    seeded = completion_request("x", temperature=0.7, seed=3)
    assert shared.job(EditJob(decision, "Who?", seeded, 4)) is None  # its own random state: alone
    # A base model that samples by default, where the counterfactual model's generate() is greedy.
    sampling = copy.deepcopy(base_model)
    sampling.generation_config.do_sample = True
    other = SharedCounterfactual.for_models(BaseModelGenerator(sampling, chat_tokenizer), counterfactual)
    assert other.job(EditJob(decision, "Who?", unset, 4)) is None
    assert other.job(EditJob(decision, "Who?", completion_request("x", temperature=0), 4)) is not None
    # Not shared: another model, an encoder-decoder, the in-context kind, another vocabulary.
    unrelated = CounterfactualModel(make_tiny_llama(chat_tokenizer, seed=3), chat_tokenizer)
    assert SharedCounterfactual.for_models(generator, unrelated) is None
    assert SharedCounterfactual.for_models(None, counterfactual) is None
    assert SharedCounterfactual.for_models(generator, object()) is None
    router = make_router(embedder, counterfactual, chat_tokenizer)
    batcher = GenerationBatcher(router, generator, shared=shared)
    try:
        answer = batcher.submit(EditJob(decision, "Who?", seeded, 4)).result(timeout=60)
    finally:
        batcher.close()
    assert counterfactual.calls == 1 and answer.completion_tokens <= 4


def test_the_server_decodes_edit_rows_in_the_base_batch_unless_told_not_to(
    base_model,
    chat_tokenizer,  # noqa: F811
    embedder,
):
    answers = {}
    for shared_blocks in (True, False):
        counterfactual = counterfactual_for(base_model, chat_tokenizer)
        router = make_router(embedder, counterfactual, chat_tokenizer)
        app = local_app(base_model, chat_tokenizer, router, admin_token="admin", shared_blocks=shared_blocks)
        with serving(app) as url:
            post_edits(url, [CITIZEN], token="admin")
            reply = chat(url, CITIZEN["prompt"], key="unused", max_tokens=6)
            assert reply.serac["route"] == "edit"
            choice = reply.choices[0]
            answers[shared_blocks] = (choice.message.content, choice.finish_reason, reply.usage.prompt_tokens)
        assert counterfactual.calls == (0 if shared_blocks else 1)
    assert answers[True] == answers[False]
