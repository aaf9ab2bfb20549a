"""The server's generation threads: continuous batching, and dynamic batching where it does not apply.

With ``continuous=True`` (the server's default) a base-model batch is decoded step by step by a
:class:`~serac.serve.continuous.ContinuousBatch`: between two steps, waiting requests with the same sampling
settings join it (under load, several at once: :data:`ADMIT_SHARE`; at once when their prompt is kept but
for its last token), and each row's answer goes back when it ends. Edit-route requests of a trained
counterfactual model that shares the base model's lower blocks join the same batch as rows of their own
(:class:`SharedCounterfactual`, :mod:`serac.serve.towers`). Other edit-route requests (a model that shares
nothing, a decoding the batch cannot give them) are answered on a thread of their own meanwhile: the oldest
waiting one and every waiting one with the same sampling settings in one call, those that arrive during a call
in the next. The base model's batch never stops for them, and each model is called from one thread only
(Hugging Face fast tokenizers are not safe to call from several threads at once; the two models have their
own).

Models and settings a continuous batch does not cover are batched per ``generate()`` call: requests that
arrive while a batch runs wait for the next pass of the generation thread, which takes the oldest waiting
request and every other waiting one that can share its ``generate()`` call: base-model requests with the same
sampling settings (one left-padded call of the base model, each row stopping on its own and streaming to its
own client), or, with ``continuous=False``, edit-route requests with the same sampling settings (one call of
the counterfactual model, on this thread). A seeded sampled request runs alone, on its own random state, so
its answer does not depend on what it was batched with. A pass about to start waits a little for requests
still on their way (:meth:`GenerationBatcher.arrival`), so that clients answered together, who ask again
together, share the next pass instead of waiting for a pass that started without them.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from serac.scope import ScopeDecision
from serac.serve.continuous import ContinuousBatch, Decoding, SharedPrefix, continuous_decoding
from serac.serve.engine import (
    MIN_SHARED_PREFIX,
    BaseModelGenerator,
    CounterfactualRow,
    EditRouter,
    GenerationJob,
    GenerationResult,
    _sampling_kwargs,
)
from serac.serve.protocol import GenerationRequest
from serac.serve.settings import DEFAULT_MAX_BATCH_SIZE
from serac.serve.towers import TwoTowers, shared_depth

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_GATHER_S",
    "Arrival",
    "BaseJob",
    "EditJob",
    "GenerationBatcher",
    "SharedCounterfactual",
]

#: The longest a batch about to start waits for requests still being parsed or routed: far below the time of
#: a pass of a real model, whose requests it saves from waiting for the whole next pass.
DEFAULT_MAX_GATHER_S = 0.1
#: Waiting requests join a running continuous batch once they are at least this share of its rows, or once
#: the oldest of them has waited :data:`ADMIT_AFTER_STEPS` decoding steps. Reading new prompts is a forward
#: pass of its own, and a pass costs about as much for a few tokens as for many (the weights are read once
#: per pass): new requests read together spare passes, at the price of a few steps' wait under load.
ADMIT_SHARE = 0.25
ADMIT_AFTER_STEPS = 3


@dataclass(frozen=True)
class BaseJob:
    """An out-of-scope request in local mode: the base model continues ``prompt_ids``."""

    prompt_ids: list[int]
    request: GenerationRequest
    max_new_tokens: int


@dataclass(frozen=True)
class EditJob:
    """An in-scope request: the counterfactual model answers ``query`` under the decision's edit.

    ``prompt_tokens`` is the prompt's length as the base route counts it; ``prefix`` goes before a non-empty
    answer (a completion continues its prompt after a space).
    """

    decision: ScopeDecision
    query: str
    request: GenerationRequest
    max_new_tokens: int
    prompt_tokens: int | None = None
    prefix: str = ""


class Arrival:
    """A request counted by :meth:`GenerationBatcher.arrival`; ``done()`` (once or more) stops counting it."""

    def __init__(self, batcher: GenerationBatcher) -> None:
        self._batcher: GenerationBatcher | None = batcher

    def done(self) -> None:
        if self._batcher is not None:
            batcher, self._batcher = self._batcher, None
            batcher._arrived()


@dataclass(frozen=True)
class _SharedEditJob:
    """An edit-route job decoded in the base model's continuous batch, on the counterfactual model's top
    blocks (:mod:`serac.serve.towers`): its input's token ids and how its row writes."""

    edit: EditJob
    prompt_ids: list[int]
    row: CounterfactualRow

    @property
    def request(self) -> GenerationRequest:
        return self.edit.request

    @property
    def max_new_tokens(self) -> int:
        return self.edit.max_new_tokens + 1  # one token past the budget tells an answer that was cut


class SharedCounterfactual:
    """A trained causal counterfactual model that shares the base model's lower blocks, decoding its rows
    in the base model's continuous batch (see :mod:`serac.serve.towers`).

    :meth:`job` turns an edit-route job into such a row when its decoding is the counterfactual model's own
    (greedy for both, or the same sampling settings); otherwise it stays with the counterfactual thread.
    """

    def __init__(self, generator: BaseModelGenerator, counterfactual: Any, towers: TwoTowers) -> None:
        self.generator = generator
        self.counterfactual = counterfactual
        self.towers = towers
        # Inputs are read on the callers' threads, while the counterfactual thread may use the model's own
        # tokenizer: a copy of it, one caller at a time.
        self._tokenizer = copy.deepcopy(counterfactual.tokenizer)
        self._lock = threading.Lock()
        self._decodes_alike: dict[tuple, bool] = {}

    @classmethod
    def for_models(
        cls, generator: BaseModelGenerator | None, counterfactual: Any
    ) -> SharedCounterfactual | None:
        """The shared decoding of ``counterfactual`` in ``generator``'s batch, or ``None`` when it does not
        share the base model's lower blocks and vocabulary (another architecture, a model trained whole, an
        encoder-decoder, the in-context kind)."""
        from serac.counterfactual import CounterfactualModel

        if generator is None or not isinstance(counterfactual, CounterfactualModel):
            return None
        if counterfactual.is_encoder_decoder or generator.is_encoder_decoder:
            return None
        depth = shared_depth(generator.model, counterfactual.model)
        if depth is None or counterfactual.tokenizer.get_vocab() != generator.tokenizer.get_vocab():
            return None
        towers = TwoTowers(generator.model, counterfactual.model, depth)
        logger.info(
            "The counterfactual model shares the base model's first %d blocks: its rows decode in the base "
            "model's batch (%s)",
            depth,
            "through the base model's top blocks with low-rank updates"
            if towers.low_rank
            else "through top blocks of their own",
        )
        return cls(generator, counterfactual, towers)

    def job(self, job: EditJob) -> _SharedEditJob | None:
        """``job`` as a row of the base model's batch, or ``None`` when its decoding there would differ from the
        counterfactual model's own (or it samples from a seed of its own)."""
        if not self._decodes_alike_for(job.request):
            return None
        decision = job.decision
        if decision.edit is None:
            return None
        with self._lock:
            ids, writings = self.counterfactual.row_inputs(
                decision.edit, decision.query or job.query, self._tokenizer
            )
        return _SharedEditJob(
            job, ids, CounterfactualRow(writings, self.counterfactual.config.copy_answer_after)
        )

    def _decodes_alike_for(self, request: GenerationRequest) -> bool:
        sampling = _sampling_kwargs(request)
        if request.seed is not None and request.temperature != 0:
            return False
        key = tuple(sorted(sampling.items()))
        if key not in self._decodes_alike:
            # What the counterfactual model's generate() applies: greedy unless asked to sample.
            own = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, **sampling}
            ours = continuous_decoding(self.generator.model, sampling)
            theirs = continuous_decoding(self.counterfactual.model, own)
            self._decodes_alike[key] = (
                ours is not None and theirs is not None and _same_decoding(ours, theirs)
            )
        return self._decodes_alike[key]


def _same_decoding(first: Decoding, second: Decoding) -> bool:
    def settings(decoding: Decoding) -> list[tuple[str, dict]]:
        return [(type(processor).__name__, vars(processor)) for processor in decoding.processors or []]

    return first.do_sample == second.do_sample and settings(first) == settings(second)


@dataclass
class _Waiting:
    job: BaseJob | EditJob | _SharedEditJob
    on_text: Callable[[str], None] | None
    cancelled: threading.Event | None
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)


def _without(items: list[_Waiting], taken: list[_Waiting]) -> list[_Waiting]:
    """``items`` less those in ``taken``."""
    chosen = {id(item) for item in taken}
    return [item for item in items if id(item) not in chosen]


def _batch_key(job: BaseJob | EditJob | _SharedEditJob) -> tuple:
    """Requests with equal keys can share one ``generate()`` call (or continuous batch)."""
    sampling = tuple(sorted(_sampling_kwargs(job.request).items(), key=lambda item: item[0]))
    if isinstance(job, EditJob):
        return ("edit", sampling)
    if isinstance(job, _SharedEditJob):
        return ("base", sampling)  # never a seeded sampled one (see SharedCounterfactual.job)
    if job.request.seed is not None and job.request.temperature != 0:
        return ("seeded", id(job))  # its own random state: alone
    return ("base", sampling)


class GenerationBatcher:
    """The generation thread: answers submitted jobs, batching those that wait together.

    Args:
        router: answers edit-route jobs with its counterfactual model.
        generator: answers base-route jobs (local mode); ``None`` in proxy mode.
        max_batch_size: the most jobs one ``generate()`` call answers; 1 answers them one at a time.

    ``batches`` counts the ``generate()`` passes run so far and ``largest_batch`` the most jobs one of
    them answered.
    """

    def __init__(
        self,
        router: EditRouter,
        generator: BaseModelGenerator | None = None,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_gather_s: float = DEFAULT_MAX_GATHER_S,
        on_batch: Callable[[str, int], None] | None = None,
        continuous: bool = True,
        shared: SharedCounterfactual | None = None,
    ) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        if not max_gather_s >= 0:
            raise ValueError(f"max_gather_s must be >= 0, got {max_gather_s!r}")
        self.router = router
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.max_gather_s = max_gather_s
        self.on_batch = on_batch
        self.continuous = continuous
        self.admit_share = ADMIT_SHARE
        self.admit_after_steps = ADMIT_AFTER_STEPS
        self._prefix = SharedPrefix(MIN_SHARED_PREFIX)
        self.shared = shared if continuous else None
        self._counterfactual_prefix = SharedPrefix(MIN_SHARED_PREFIX) if self.shared is not None else None
        self.batches = 0
        self.largest_batch = 0
        self._waiting: list[_Waiting] = []
        self._edits: list[_Waiting] = []  # edit-route jobs for the counterfactual thread (continuous mode)
        self._counting = threading.Lock()
        self._arriving = 0
        self._last_pass_s = 0.0
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="serac-generation", daemon=True)
        self._thread.start()
        # With continuous batching, a trained counterfactual model answers on a thread of its own, beside the
        # base model's batch, which then never stops for it (its tokenizer is its own).
        self._edit_thread: threading.Thread | None = None
        if continuous:
            self._edit_thread = threading.Thread(
                target=self._run_edits, name="serac-counterfactual", daemon=True
            )
            self._edit_thread.start()

    def submit(
        self,
        job: BaseJob | EditJob,
        on_text: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Future:
        """Queue ``job``; the future gets its :class:`~serac.serve.engine.GenerationResult`.

        ``on_text`` receives the answer's text piece by piece, on the generation thread; setting
        ``cancelled`` stops the job at its next token, or before it starts.
        """
        if isinstance(job, BaseJob) and self.generator is None:
            raise ValueError("a base-model job needs a generator (local mode)")
        if isinstance(job, EditJob) and self.shared is not None:
            job = self.shared.job(job) or job
        waiting = _Waiting(job, on_text, cancelled)
        with self._condition:
            if self._closed:
                raise RuntimeError("the generation batcher is closed")
            if isinstance(job, EditJob) and self._edit_thread is not None:
                self._edits.append(waiting)
            else:
                self._waiting.append(waiting)
            self._condition.notify_all()
        return waiting.future

    def arrival(self) -> Arrival:
        """Count a request on its way to :meth:`submit` (being parsed, tokenized, routed) until its
        :meth:`Arrival.done`: a batch about to start waits a little for it (see :data:`DEFAULT_MAX_GATHER_S`).
        Call ``done()`` after submitting, so the request always counts in one place."""
        with self._condition:
            self._arriving += 1
        return Arrival(self)

    def _arrived(self) -> None:
        with self._condition:
            self._arriving -= 1
            self._condition.notify_all()

    @property
    def waiting(self) -> int:
        """Jobs submitted and not started yet."""
        with self._condition:
            return len(self._waiting) + len(self._edits)

    def close(self) -> None:
        """Stop the threads after their current batches; jobs still waiting are cancelled."""
        with self._condition:
            self._closed = True
            waiting, self._waiting, self._edits = self._waiting + self._edits, [], []
            self._condition.notify_all()
        for item in waiting:
            item.future.cancel()

    # ------------------------------------------------------------------ the generation thread
    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._closed:
                    self._condition.wait()
                self._gather()
                if self._closed:
                    return
                batch = self._next_batch()
            batch = [item for item in batch if self._start(item)]
            if batch:
                started = time.perf_counter()
                session = self._continuous_batch(batch)
                if session is not None:
                    self._decode_continuously(session, batch)
                else:
                    self._answer(batch)
                self._last_pass_s = time.perf_counter() - started

    def _run_edits(self) -> None:
        """The counterfactual thread: the oldest waiting edit-route job and those that can share its call;
        those that arrive during a call share the next one."""
        while True:
            with self._condition:
                while not self._edits and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                key = _batch_key(self._edits[0].job)
                batch = [item for item in self._edits if _batch_key(item.job) == key][: self.max_batch_size]
                self._edits = _without(self._edits, batch)
            batch = [item for item in batch if self._start(item)]
            if batch:
                self._answer(batch)

    # ------------------------------------------------------------------ continuous batching
    def _continuous_batch(self, batch: list[_Waiting]) -> ContinuousBatch | None:
        """A continuous batch for a base-model batch, when the model and its sampling settings allow one."""
        if not self.continuous or self.generator is None or _batch_key(batch[0].job)[0] != "base":
            return None
        return ContinuousBatch.for_request(
            self.generator,
            batch[0].job.request,
            self._prefix,
            towers=self.shared.towers if self.shared is not None else None,
            counterfactual_prefix=self._counterfactual_prefix,
        )

    def _decode_continuously(self, session: ContinuousBatch, batch: list[_Waiting]) -> None:
        """Decode ``batch`` step by step; between steps, waiting requests with the same settings join it, and
        every row's answer goes back as soon as it ends."""
        key = _batch_key(batch[0].job)
        self._admit(session, batch)
        held = 0  # steps since a request that could join started waiting
        while len(session):
            with self._condition:
                room = self.max_batch_size - len(session)
                joinable = self._joinable(key, room)
                if joinable and (
                    len(joinable) >= self.admit_share * len(session)
                    or held >= self.admit_after_steps
                    or len(joinable) >= room
                ):
                    joining, held = joinable, 0
                else:
                    # Those with nothing to read but their last token join at once: it costs no pass.
                    joining = [
                        item
                        for item in joinable
                        if session.ready(item.job.prompt_ids, isinstance(item.job, _SharedEditJob))
                    ]
                    held = held + 1 if len(joining) < len(joinable) else 0
                self._waiting = _without(self._waiting, joining)
            joining = [item for item in joining if self._start(item)]
            if joining:
                self._admit(session, joining)
            if len(session):
                self._settle(session, session.step)

    def _admit(self, session: ContinuousBatch, items: list[_Waiting]) -> None:
        self._count(len(items))
        edits = sum(isinstance(item.job, _SharedEditJob) for item in items)
        if self.on_batch is not None:
            for route, size in (("base_model", len(items) - edits), ("edit", edits)):
                if size:
                    self.on_batch(route, size)
        jobs = []
        for item in items:
            job = item.job
            assert isinstance(job, (BaseJob, _SharedEditJob))
            if isinstance(job, _SharedEditJob):  # its text goes out once its answer is final
                jobs.append(
                    GenerationJob(
                        job.prompt_ids, job.request, job.max_new_tokens, None, item.cancelled, job.row
                    )
                )
            else:
                jobs.append(
                    GenerationJob(
                        job.prompt_ids, job.request, job.max_new_tokens, item.on_text, item.cancelled
                    )
                )
        self._settle(session, lambda: session.admit(jobs, items), items)
        self._count(0, len(session))

    def _settle(
        self, session: ContinuousBatch, run: Callable[[], list], joining: Sequence[_Waiting] = ()
    ) -> None:
        """Run an admission or a step; answer the rows that ended, or fail every row on an error."""
        try:
            finished = run()
        except Exception as error:  # every request in the batch gets the failure, not a hang
            for item in [*session.fail(), *joining]:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        for item, result in finished:
            job = item.job
            try:
                if isinstance(job, _SharedEditJob):
                    decision, edit_job = job.edit.decision, job.edit
                    query = decision.query or edit_job.query
                    result = self._deliver(
                        item,
                        edit_job,
                        self.router.finish(
                            result.text,
                            query,
                            edit_job.max_new_tokens,
                            edit_job.request.stop,
                            edit_job.prompt_tokens,
                        ),
                    )
            except Exception as error:
                item.future.set_exception(error)
                continue
            item.future.set_result(result)

    def _joinable(self, key: tuple, room: int) -> list[_Waiting]:
        """Waiting base-model jobs that can join a running batch with ``key`` (the lock is held). None while an
        older job needs other settings: the batch then runs out, and that job goes next."""
        taken: list[_Waiting] = []
        for item in self._waiting:
            if isinstance(item.job, EditJob):
                continue
            if _batch_key(item.job) != key:
                break
            if len(taken) >= room:
                break
            taken.append(item)
        return taken

    def _gather(self) -> None:
        """Wait (the lock is held) for requests on their way, while the batch has room: clients answered
        by the last pass ask again at about the same time, and a pass that starts before their requests
        are routed makes them wait for all of it. Bounded by a quarter of the last pass's time (so a fast
        model barely waits) and by ``max_gather_s``."""
        deadline = time.monotonic() + min(self.max_gather_s, self._last_pass_s / 4)
        while self._arriving and len(self._waiting) < self.max_batch_size and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._condition.wait(remaining)

    def _next_batch(self) -> list[_Waiting]:
        """The oldest waiting job and the waiting ones that can share its call (the lock is held)."""
        first = self._waiting[0]
        key = _batch_key(first.job)
        batch, rest = [first], []
        widest = budget = 0
        if isinstance(first.job, (BaseJob, _SharedEditJob)):
            widest, budget = len(first.job.prompt_ids), first.job.max_new_tokens
        for item in self._waiting[1:]:
            if len(batch) >= self.max_batch_size or _batch_key(item.job) != key:
                rest.append(item)
                continue
            if isinstance(item.job, (BaseJob, _SharedEditJob)) and not self._fits(
                max(widest, len(item.job.prompt_ids)), max(budget, item.job.max_new_tokens)
            ):
                rest.append(item)  # padded to the widest prompt, it would run past the context
                continue
            if isinstance(item.job, (BaseJob, _SharedEditJob)):
                widest, budget = max(widest, len(item.job.prompt_ids)), max(budget, item.job.max_new_tokens)
            batch.append(item)
        self._waiting = rest
        return batch

    def _fits(self, width: int, max_new_tokens: int) -> bool:
        generator = self.generator
        if generator is None or generator.max_length is None or generator.is_encoder_decoder:
            return True
        return width + generator.budget(width, max_new_tokens) <= generator.max_length

    @staticmethod
    def _start(item: _Waiting) -> bool:
        if item.cancelled is not None and item.cancelled.is_set():
            item.future.cancel()  # its client went away before it started
            return False
        return item.future.set_running_or_notify_cancel()

    def _answer(self, batch: list[_Waiting]) -> None:
        try:
            results = self._generate(batch)
        except Exception as error:  # every request of the batch gets the failure, not a hang
            for item in batch:
                item.future.set_exception(error)
            return
        for item, result in zip(batch, results, strict=True):
            item.future.set_result(result)

    def _count(self, started: int, running: int = 0) -> None:
        """Count a pass that started ``started`` jobs (none: only the batch's size) in ``batches`` and
        ``largest_batch``; both threads count."""
        with self._counting:
            self.batches += bool(started)
            self.largest_batch = max(self.largest_batch, started, running)

    def _generate(self, batch: Sequence[_Waiting]) -> list[GenerationResult]:
        self._count(len(batch))
        route = "edit" if isinstance(batch[0].job, EditJob) else "base_model"
        if self.on_batch is not None:
            self.on_batch(route, len(batch))
        if route == "edit":
            return self._answer_edits(batch)
        assert self.generator is not None  # checked in submit()
        jobs = [
            GenerationJob(
                item.job.prompt_ids, item.job.request, item.job.max_new_tokens, item.on_text, item.cancelled
            )
            for item in batch
        ]
        seed = batch[0].job.request.seed
        if len(batch) > 1 or seed is None:
            return self.generator.generate_many(jobs)
        # A seeded request samples from its own random state and leaves the process's untouched.
        device = next(self.generator.model.parameters()).device
        devices = [] if device.type == "cpu" else [device]
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            torch.manual_seed(seed)
            return self.generator.generate_many(jobs)

    def _answer_edits(self, batch: Sequence[_Waiting]) -> list[GenerationResult]:
        jobs: list[Any] = [item.job for item in batch]
        results = self.router.answer_many(
            [job.decision for job in jobs],
            [job.query for job in jobs],
            [job.max_new_tokens for job in jobs],
            [job.request.stop for job in jobs],
            request=jobs[0].request,
            prompt_tokens=[job.prompt_tokens for job in jobs],
        )
        return [
            self._deliver(item, job, result) for item, job, result in zip(batch, jobs, results, strict=True)
        ]

    @staticmethod
    def _deliver(item: _Waiting, job: EditJob, result: GenerationResult) -> GenerationResult:
        """An edit-route answer with its prefix, its text sent to a streaming caller at once."""
        if job.prefix and result.text:
            result = GenerationResult(
                job.prefix + result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens
            )
        if item.on_text is not None and result.text:
            item.on_text(result.text)
        return result
