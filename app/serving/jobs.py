"""Submitting jobs to the workers' streams and waiting for their outcomes without polling.

One pub/sub connection per gateway process listens on DONE_CHANNEL and wakes the waiters of each job;
the outcome itself is read from its key, which also covers a notification lost while reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ResponseError

from app.platform import metrics
from app.platform.errors import ApiError, ClientGone, storage_full
from app.platform.limits import parked
from app.serving.fair_share import FairShare
from app.serving.usage import RecordQuota
from workers.contract.cards import ModelCard
from workers.contract.heartbeats import live_ids
from workers.contract.jobs import (
    AnyJob,
    ContrastJob,
    DecodeStep,
    GenerateJob,
    JobOutcome,
    Sampling,
    ScoreJob,
    encode_job,
    job_lane,
)
from workers.contract.keys import (
    BULK_LANE,
    CONSUMER_GROUP,
    DONE_CHANNEL,
    FULL_NOTICE,
    cancel_key,
    inflight_key,
    job_outcome_key,
    jobs_stream,
    serving_key,
    steps_channel,
)
from workers.contract.lifetimes import CLAIM_UNTIL, READ_LIVE, expiry_key, forget, set_until
from workers.contract.names import Retain, as_bytes
from workers.redis_client import STORAGE_FULL, TRANSIENT

log = logging.getLogger("app.serving.jobs")

# Set while a batch's inputs run: their jobs go to the bulk lane, behind requests that clients wait on.
BULK: ContextVar[bool] = ContextVar("bulk_lane", default=False)

ADD_IF_ROOM = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return nil end
return redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
"""
RECHECK_S = 2.0  # how often a waiter re-reads the outcome key in case a notification was lost
# A job whose queue has had no live worker this long is answered 503 (a worker refreshes its mark every 5 s).
UNSERVED_S = 8.0
PROBE_S = 0.5  # how often a waiter with a client asks whether that client is still connected
# Whether the current request's client has gone away (set per request by the app; None outside requests).
client_gone: ContextVar[Callable[[], Awaitable[bool]] | None] = ContextVar("client_gone", default=None)


def new_job_id() -> str:
    return uuid.uuid4().hex


def generation_job(
    tenant: str, card: ModelCard, prompt_ids: list[int], sampling: Sampling, retain: Retain | None = None
) -> GenerateJob:
    """A plain generation of `card`'s model (the worker runs it in the model's continuous batch); its record keeps
    what `retain` says (default: the model's)."""
    return GenerateJob(
        job_id=new_job_id(),
        tenant=tenant,
        model=card.name,
        fingerprint=card.fingerprint,
        prompt_ids=prompt_ids,
        sampling=sampling,
        retain=retain or card.retain,
    )


class JobQueue:
    def __init__(
        self,
        redis: Redis,
        timeout_s: float,
        max_depth: int,
        tenant_share: int = 64,
        record_quota: RecordQuota | None = None,
    ) -> None:
        self.redis = redis
        self.record_quota = record_quota
        self.timeout_s = timeout_s
        self.max_depth = max_depth
        self.share = FairShare(tenant_share)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._full: set[str] = set()  # jobs whose outcome a full Redis refused (settled without one)
        self._listener: asyncio.Task[None] | None = None
        self._groups: set[str] = set()
        self._add_if_room = redis.register_script(ADD_IF_ROOM)
        self._claim_until = redis.register_script(CLAIM_UNTIL)
        self._read_live = redis.register_script(READ_LIVE)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="job-replies")

    async def stop(self) -> None:
        if self._listener:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _listen(self) -> None:
        backoff = 0.2
        while True:
            try:
                await self.redis.ping()  # a cluster client learns its slot map first: its pub/sub needs it
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(DONE_CHANNEL)
                    backoff = 0.2
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: waiters fall back to re-reading outcome keys
                log.warning("reply listener lost Redis (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _wake(self, notice: str) -> None:
        """Wake a job's waiters: its outcome is stored, or (a full notice) Redis was too full to store it."""
        job_id = notice.removesuffix(FULL_NOTICE)
        if job_id != notice and job_id in self._waiters:
            self._full.add(job_id)
        for future in self._waiters.get(job_id, ()):
            if not future.done():
                future.set_result(None)

    # ------------------------------------------------------------ submitting

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await self.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    async def submit(self, job: AnyJob) -> str:
        """Add the job to its lane's stream, if that has room. A job without a deadline of its own gets the wait's:
        past it no one waits for its answer, so a worker neither starts it nor goes on with it."""
        if job.deadline is None:
            job.deadline = time.time() + self.timeout_s
        if self.record_quota is not None:
            await self.record_quota.check(self.redis, job)
        stream = jobs_stream(job.model, BULK_LANE if BULK.get() else job_lane(job))
        await self._ensure_group(stream)
        # Workers delete finished entries, so the stream's length is the number of waiting and running jobs;
        # the check and the add are one script, so concurrent requests cannot overshoot the limit together.
        added = await self._add_if_room(keys=[stream], args=[self.max_depth, encode_job(job)["job"]])
        if added is None:
            raise ApiError(
                429,
                "queue_full",
                f"{job.model!r} has {self.max_depth} jobs waiting; retry shortly",
                headers={"Retry-After": "2"},
            )
        return job.job_id

    def _mark_deadline(self) -> float:
        """When an inflight or cancel mark stops counting: a while after any wait for its job has ended."""
        return time.time() + self.timeout_s + 60

    async def run(self, job: AnyJob) -> JobOutcome:
        """Submit and wait; for score jobs an identical job already in flight is joined instead."""
        if isinstance(job, ScoreJob):
            key = inflight_key(job.tenant, job.record_id)
            marks = [key, expiry_key(key)]  # no TTL: a flood of records cannot evict the mark (lifetimes.py)
            claimed = await self._claim_until(keys=marks, args=[job.job_id, self._mark_deadline(), time.time()])
            if not claimed:
                running = as_bytes(await self._read_live(keys=marks, args=[time.time()]))
                if running is not None:
                    outcome = await self.wait(running.decode())
                    if not _cancelled(outcome):
                        return outcome
                pipe = self.redis.pipeline(transaction=True)  # its client left, or it lapsed: run ours
                set_until(pipe, key, job.job_id, self._mark_deadline())
                await pipe.execute()
        started = time.perf_counter()
        async with self._turn(job):
            await self.submit(job)
            try:
                outcome = await self.wait(job.job_id, resubmit=job)
            except asyncio.CancelledError:  # its caller gave up (a sibling failed, the response was cut)
                with anyio.CancelScope(shield=True), contextlib.suppress(*TRANSIENT):
                    await self._cancel(job.job_id, job)  # the worker skips it, or stops it at its next slice
                raise
        metrics.JOBS.labels(job.model, job.kind, str(outcome.ok).lower()).observe(time.perf_counter() - started)
        return outcome

    async def stream(self, job: ContrastJob) -> AsyncIterator[DecodeStep | JobOutcome]:
        """Submit a decoding job and yield each step as the worker takes it, then the outcome."""
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(steps_channel(job.job_id))  # before submitting: no step is missed
            with parked():  # relaying a worker's steps: not busy in this process
                async with self._turn(job):
                    async for item in self._relay(pubsub, job):
                        yield item

    def _turn(self, job: AnyJob) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the tenant's turns in the model's interactive lane; batches' jobs keep their own bound."""
        if BULK.get():
            return contextlib.nullcontext()
        return self.share.turn(job.tenant, job.model)

    async def _relay(self, pubsub: PubSub, job: ContrastJob) -> AsyncIterator[DecodeStep | JobOutcome]:
        await self.submit(job)
        waiter = asyncio.create_task(self.wait(job.job_id))
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is not None:
                    yield DecodeStep.model_validate_json(message["data"])
                elif waiter.done():
                    break
            yield waiter.result()
        finally:
            if not waiter.done() or waiter.exception() is not None:  # cut (its client left), failed or timed out
                waiter.cancel()  # the worker stops the job
                # shielded: a response cut by its client is cancelled at every await of its task (anyio's scopes)
                with anyio.CancelScope(shield=True), contextlib.suppress(*TRANSIENT):
                    await self._cancel(job.job_id, job)

    async def wait(self, job_id: str, resubmit: AnyJob | None = None) -> JobOutcome:
        """The job's outcome, woken by the done channel and re-read every RECHECK_S. If Redis went away
        meanwhile, `resubmit` is added again once it is back: a Redis that restarted without persistence has
        lost the entry, and a duplicate is harmless (scores are idempotent, a worker finds the record)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(job_id, []).append(future)
        deadline = loop.time() + self.timeout_s
        outage = False
        unserved_since: float | None = None
        gone = client_gone.get()
        try:
            with parked():  # waiting on a worker: not busy in this process
                while True:
                    try:
                        raw = await self.redis.get(job_outcome_key(job_id))
                        if raw is not None:
                            outcome = JobOutcome.model_validate_json(raw)
                            metrics.TOKENS.labels("generated").inc(len(outcome.completion_ids or ()))
                            return outcome
                        if job_id in self._full:
                            raise storage_full("the store is full (Redis reached its memory limit): nothing was kept")
                        if outage and resubmit is not None:
                            log.warning("re-submitting job %s after a Redis outage", job_id)
                            self._groups.clear()
                            await self.submit(resubmit)
                        outage = False
                        if resubmit is not None and not await live_ids(
                            self.redis, serving_key(resubmit.model), time.time()
                        ):
                            unserved_since = unserved_since or loop.time()
                            if loop.time() - unserved_since > UNSERVED_S:
                                await self._cancel(job_id, resubmit)  # a worker that comes back skips it
                                raise ApiError(
                                    503,
                                    "model_unavailable",
                                    f"no live worker serves {resubmit.model!r}; retry shortly",
                                    headers={"Retry-After": "5"},
                                )
                        else:
                            unserved_since = None
                    except TRANSIENT:
                        outage = True  # keep waiting through the outage or failover; the deadline still holds
                    if gone is not None and await gone():
                        await self._cancel(job_id, resubmit)
                        raise ClientGone(job_id)
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        if resubmit is not None:  # our own job: the worker stops it too, no one reads its answer
                            await self._cancel(job_id, resubmit)
                        raise ApiError(504, "job_timeout", f"no worker finished the job within {self.timeout_s:.0f}s")
                    if future.done():  # woken, but the outcome was not readable: wait for the next notice
                        self._waiters[job_id].remove(future)
                        future = loop.create_future()
                        self._waiters[job_id].append(future)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(future), min(PROBE_S if gone else RECHECK_S, remaining))
        finally:
            waiting = self._waiters.get(job_id, [])
            waiting.remove(future)
            if not waiting:
                self._waiters.pop(job_id, None)
                self._full.discard(job_id)

    async def _cancel(self, job_id: str, job: AnyJob | None) -> None:
        """Mark the job cancelled (a worker that has not started it skips it, heavy work stops at its next slice)
        and free its inflight key, so that an identical request later runs its own job; a request that had joined
        it re-submits."""
        metrics.CANCELLED.inc()
        pipe = self.redis.pipeline(transaction=True)
        set_until(pipe, cancel_key(job_id), 1, self._mark_deadline())  # no TTL: eviction cannot lift it
        if isinstance(job, ScoreJob):
            forget(pipe, inflight_key(job.tenant, job.record_id))
        await pipe.execute()


def _cancelled(outcome: JobOutcome) -> bool:
    return not outcome.ok and outcome.error is not None and outcome.error.code == "cancelled"


# The request field a worker's refusal is about, by its code (a route may say otherwise for its own fields).
OUTCOME_PARAMS = {"cover_set_too_large": "max_states"}
NO_ROOM = {"context_length_exceeded": "max_tokens"}  # a generation's refusal: no room left to generate


def raise_for_outcome(outcome: JobOutcome, params: dict[str, str] | None = None) -> JobOutcome:
    """The outcome if it succeeded, else its error as an ApiError whose `param` names the field it is about
    (`params`, then OUTCOME_PARAMS, by the error's code)."""
    if not outcome.ok:
        error = outcome.error
        if error is not None and error.code == STORAGE_FULL:  # the worker could not keep what it computed
            raise storage_full(error.message)
        status = error.status if error else 500
        code = error.code if error else "job_failed"
        raise ApiError(
            424 if status >= 500 else status,
            code,
            error.message if error else "the job failed",
            {**OUTCOME_PARAMS, **(params or {})}.get(code) if status < 500 else None,
        )
    return outcome
