"""The worker process: loads its models, then consumes jobs from their Redis Streams in a consumer group."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType
from typing import Any

import redis
import torch
from pydantic import Field

from workers.backends import load_backend
from workers.backends.base import Backend
from workers.config import CommonSettings
from workers.contract.heartbeats import beat, retire
from workers.contract.jobs import (
    AnyJob,
    ContrastJob,
    GenerateJob,
    JobError,
    JobOutcome,
    ScoreJob,
    decode_job,
    job_lane,
)
from workers.contract.keys import (
    BULK_LANE,
    CONSUMER_GROUP,
    DEAD_LETTER_STREAM,
    DONE_CHANNEL,
    HEAVY_LANE,
    LANES,
    MAX_GROUP,
    SCORING_LANE,
    SECRET_KEY,
    STEPPED_LANE,
    cancel_key,
    card_key,
    full_notice,
    group_name,
    inflight_key,
    job_outcome_key,
    jobs_stream,
    tokenizer_key,
)
from workers.contract.lifetimes import forget, keep_until
from workers.contract.names import ProtocolError, as_bytes, new_secret
from workers.handlers.base import Context
from workers.handlers.registry import handler_for, run_job
from workers.in_flight import InFlight, Stepped, stepped_tokens
from workers.lanes import CANCEL_CHECK_S, HeavyTurn, Stopped, Turns, stopped_error
from workers.lifecycle import arm_children
from workers.outcomes import REDIS_LOST, worker_error
from workers.probe import PROBE_TEXT, verify_rebuild
from workers.redis_client import REDIS_ERRORS, TRANSIENT, connect, storage_full

log = logging.getLogger("workers")

HEARTBEAT_S = 5.0
ALIVE_TTL_S = 15
OUTCOME_TTL_S = 3600


class WorkerSettings(CommonSettings):
    worker_threads: int = max(1, os.cpu_count() or 1)
    # A job whose worker has been silent this long is reclaimed by another; a live worker keeps its running job
    # fresh from the heartbeat, so long jobs are never taken over. Well under the gateway's job timeout (300 s).
    visibility_timeout_s: int = 60
    reclaim_every_s: float = 10.0
    max_deliveries: int = 3  # then the job goes to the dead-letter stream
    # A Redis reply later than this is a lost connection (a cut link sends no reset): the worker reconnects, and
    # what it could not settle meanwhile another worker answers after the visibility timeout. Above the 1 s block.
    redis_timeout_s: float = Field(default=30.0, gt=2)
    # Stream entries taken per read: scoring jobs among them share batched forwards. Kept small, so that one busy
    # worker does not hold jobs that an idle one could run.
    worker_batch_jobs: int = Field(default=8, ge=1, le=256)
    # An idle worker that reads fewer jobs than it took last time waits for the rest while they keep arriving, at
    # most this long between two arrivals (and four times it in all); 0 turns it off. See Worker._gather.
    worker_gather_ms: float = Field(default=15.0, ge=0, le=1000)
    # Generations decoding together (they join and leave the running batch at every step), bounded in number and
    # in tokens (prompt + max_tokens each: what their KV caches may grow to). A generation larger than the token
    # budget still runs, once nothing else is generating.
    worker_max_sequences: int = Field(default=32, ge=1, le=1024)
    worker_generation_tokens: int = Field(default=65536, ge=1)
    # Heavy jobs (head training, attribution, byte-level work, exports, cross-model statistics) running at once, each
    # in a thread of its own taking turns by slices (workers.lanes); more wait, the least served tenant's first.
    worker_heavy_jobs: int = Field(default=4, ge=1, le=64)
    # Batches' jobs (the bulk lane) taken per read, and only when nothing a client waits on was there: a small round,
    # so that a request arriving meanwhile waits for little.
    worker_bulk_jobs: int = Field(default=2, ge=1, le=256)


class Worker:
    def __init__(self, settings: WorkerSettings, model_names: list[str] | None = None) -> None:
        if not settings.redis_url:
            raise SystemExit("REDIS_URL is not set: a worker needs the deployment's Redis")
        self.settings = settings
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.redis = connect(
            settings.redis_url,
            settings.redis_cluster,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=min(10.0, settings.redis_timeout_s),
            **settings.redis_auth(),
        )
        self.stopping = threading.Event()
        self.done = threading.Event()  # set when serve() returns; the heartbeat holds jobs until then
        self.held: dict[tuple[str, bytes], AnyJob] = {}  # the stream entries taken and not yet settled
        self.held_lock = threading.Lock()
        # generations and token-level contrastive decodings read, waiting for room in the running batch
        self.waiting: list[tuple[str, bytes, Stepped]] = []
        self.running: dict[str, tuple[str, bytes, int]] = {}  # job id -> its entry and its generation tokens
        self.last_intake = 1  # jobs taken by the last read of an idle worker (with what it gathered)
        self.turns = Turns(settings.worker_threads)
        self.heavy_lock = threading.Lock()
        self.heavy_queue: list[tuple[str, bytes, AnyJob]] = []  # heavy jobs read, waiting for a thread
        self.heavy_active: dict[str, str] = {}  # job id -> tenant of the heavy jobs running
        specs = [m for m in settings.models if not model_names or m.name in model_names]
        if not specs:
            raise SystemExit(f"none of {model_names} is configured; configured: {[m.name for m in settings.models]}")
        self.backends: dict[str, Backend] = {}
        for spec in specs:
            backend = load_backend(spec, settings.data_dir)
            verify_rebuild(backend, backend.encode(PROBE_TEXT))
            self.backends[spec.name] = backend
        if settings.secret:
            secret = settings.secret.encode()
        else:
            self.redis.set(SECRET_KEY, new_secret(), nx=True)
            secret = as_bytes(self.redis.get(SECRET_KEY)) or b""
        self.ctx = Context.build(self.redis, self.backends, secret, settings.record_ttl_s)
        self.in_flight = InFlight(self.ctx)  # generations, decodings, and scoring on engines with their own scheduler
        names = sorted(self.backends)
        # Each model's own stream, and one per group of hosted models for jobs that need several at once.
        self.queues = [
            group_name(group)
            for size in range(1, min(MAX_GROUP, len(names)) + 1)
            for group in itertools.combinations(names, size)
        ]
        # Interactive lanes first: entries are handled in the order they are read.
        self.lane_streams = {lane: [jobs_stream(queue, lane) for queue in self.queues] for lane in LANES}
        self.streams = {stream: ">" for lane in LANES for stream in self.lane_streams[lane]}  # all of them

    # ------------------------------------------------------------ registration

    def _announce(self) -> None:
        for name, backend in self.backends.items():
            card = backend.card
            self.redis.set(card_key(name), card.model_dump_json())
            if not self.redis.exists(tokenizer_key(card.fingerprint)):
                self.redis.set(tokenizer_key(card.fingerprint), backend.tokenizer_json())
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.queues:
            beat(pipe, queue, self.id, time.time(), ALIVE_TTL_S)
        pipe.execute()
        for stream in self.streams:
            try:
                self.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _heartbeat(self) -> None:
        beat = min(HEARTBEAT_S, self.settings.visibility_timeout_s / 3)  # refreshes well inside the timeout
        while not self.done.wait(beat):
            try:
                self._announce()
                self._hold_running()
            except REDIS_ERRORS as exc:
                log.warning("heartbeat failed: %s", exc)

    def _hold_running(self) -> None:
        """Reset the idle time of the entries taken: XCLAIM by their own consumer with JUSTID leaves the
        delivery count alone, so only a silent (dead or stopped) worker's jobs reach the visibility timeout."""
        with self.held_lock:
            held = list(self.held)
        for stream, entry_id in held:
            self.redis.xclaim(stream, CONSUMER_GROUP, self.id, 0, [entry_id], justid=True)

    def _retire(self) -> None:
        with contextlib.suppress(redis.RedisError):
            pipe = self.redis.pipeline(transaction=False)
            for queue in self.queues:
                retire(pipe, queue, self.id)
            pipe.execute()

    # ------------------------------------------------------------ consuming

    def serve(self) -> None:
        """Read jobs as they arrive and run them: scoring and other jobs at once, generations by joining the running
        batch, which moves one step between reads. A stopping worker takes nothing new and finishes what it holds."""
        self._announce()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        log.info("worker %s serving %s", self.id, sorted(self.backends))
        last_reclaim = last_cancel_check = 0.0
        backoff = 0.5
        while not self.stopping.is_set() or self.running or self.waiting or self.heavy_active:
            try:
                busy = bool(self.running or self.waiting)
                entries: list[tuple[str, bytes, dict[bytes, bytes]]] = []
                if not self.stopping.is_set():
                    if time.monotonic() - last_reclaim > self.settings.reclaim_every_s:
                        last_reclaim = time.monotonic()
                        entries += self._reclaim()
                    entries += self._intake(busy)
                elif not busy:  # stopping: heavy jobs end at their next slice
                    self.stopping.wait(0.05)
                if entries or self.running or self.waiting:
                    with self.turns.interactive():  # heavy jobs' slices wait meanwhile
                        self._handle_many(entries)
                        if time.monotonic() - last_cancel_check > CANCEL_CHECK_S:
                            last_cancel_check = time.monotonic()
                            self._stop_left()
                        if self.running or self.waiting:
                            self._advance()
                backoff = 0.5
            except TRANSIENT as exc:  # Redis away, or a cluster failing over: the client finds the new master
                if self.stopping.is_set():  # what it held is reclaimed by others after the visibility timeout
                    break
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._announce()  # Redis lost its data (restart without persistence, or a failover): new groups
        self.done.set()
        self._retire()
        log.info("worker %s stopped", self.id)

    def _intake(self, busy: bool) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """The entries to take now: what a client waits on first, without waiting (scoring always, stepped jobs while
        the running batch has room, heavy jobs as many as heavy slots are free: a busy worker takes nothing it
        cannot start, and another worker can); when there was none, a few of the batches' jobs, an idle worker
        waiting up to a second for either."""
        room = self.settings.worker_max_sequences - len(self.running) - len(self.waiting)
        count = min(self.settings.worker_batch_jobs, room) if room > 0 else self.settings.worker_batch_jobs
        lanes = self._lane_streams(SCORING_LANE, *([STEPPED_LANE] if room > 0 else []))
        with self.heavy_lock:
            heavy_room = self.settings.worker_heavy_jobs - len(self.heavy_active) - len(self.heavy_queue)
        heavy = self._lane_streams(HEAVY_LANE) if heavy_room > 0 else {}
        read = self._read(lanes, count, None)
        for stream in heavy:  # COUNT is per stream: one at a time, so that the heavy slots bound the whole
            if heavy_room > 0:
                taken = self._read({stream: ">"}, heavy_room, None)
                heavy_room -= len(taken)
                read += taken
        if not read:
            waits = heavy if heavy_room >= self.settings.worker_bulk_jobs else {}  # COUNT below is per stream
            bulk = {**lanes, **waits, **self._lane_streams(BULK_LANE)}
            read = self._read(bulk, self.settings.worker_bulk_jobs, None if busy else 1000)
        if read and not busy:
            read += self._gather(lanes, len(read), count)
            self.last_intake = len(read)
        return read

    def _lane_streams(self, *lanes: str) -> dict[str, str]:
        return {stream: ">" for lane in lanes for stream in self.lane_streams[lane]}

    def _read(
        self, streams: dict[str, str], count: int, block_ms: int | None
    ) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        read: Any = self.redis.xreadgroup(
            CONSUMER_GROUP,
            self.id,
            streams,  # type: ignore[arg-type]
            count=count,
            block=block_ms,
        )
        return [(stream.decode(), entry_id, fields) for stream, entries in read or [] for entry_id, fields in entries]

    def _gather(self, streams: dict[str, str], have: int, count: int) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """More jobs for an idle worker's batch, when fewer arrived than it took last time: their callers are then
        most likely on their way back (clients that send their next request when an answer comes), and a batch
        started now would leave them a batch of their own after it (under four such clients, batches of 1 and 3
        alternate instead of one of 4). Reads on while jobs keep arriving, each within `worker_gather_ms` of the
        last, for at most four times that in all; a worker whose last read took one job never waits."""
        gap = self.settings.worker_gather_ms / 1000
        if have >= self.last_intake or gap <= 0:
            return []
        out: list[tuple[str, bytes, dict[bytes, bytes]]] = []
        deadline = time.monotonic() + 4 * gap
        while have + len(out) < count:
            wait = min(gap, deadline - time.monotonic())
            if wait <= 0:
                break
            more = self._read(streams, count - have - len(out), max(1, round(wait * 1000)))  # block=0: forever
            if not more:
                break
            out += more
        return out

    def _reclaim(self) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """Take over jobs left pending by consumers that went silent (e.g. a killed worker); a job delivered
        max_deliveries times without finishing goes to the dead-letter stream and its client gets an error."""
        idle_ms = self.settings.visibility_timeout_s * 1000
        taken = []
        for stream in self.streams:
            pending: Any = self.redis.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=16, idle=idle_ms)
            for entry in pending:
                entry_id = entry["message_id"]
                if entry["times_delivered"] >= self.settings.max_deliveries:
                    self._dead_letter(stream, entry_id, entry["times_delivered"])
                    continue
                claimed: Any = self.redis.xclaim(stream, CONSUMER_GROUP, self.id, idle_ms, [entry_id])
                for claimed_id, fields in claimed:
                    if fields:  # an entry deleted from the stream comes back without fields
                        log.info("reclaimed %s from %s (delivery %d)", claimed_id, stream, entry["times_delivered"] + 1)
                        taken.append((stream, claimed_id, fields))
                    else:
                        self.redis.xack(stream, CONSUMER_GROUP, claimed_id)
        return taken

    def _dead_letter(self, stream: str, entry_id: bytes, deliveries: int) -> None:
        found: Any = self.redis.xrange(stream, entry_id, entry_id)
        fields = found[0][1] if found else {}
        reason = f"delivered {deliveries} times without finishing"
        log.error("job entry %s on %s: %s; dead-lettered", entry_id, stream, reason)
        self.redis.xadd(
            DEAD_LETTER_STREAM,
            {
                "stream": stream,
                "entry": entry_id,
                "reason": reason,
                **({"job": fields[b"job"]} if b"job" in fields else {}),
            },
            maxlen=10000,
        )
        try:
            job = decode_job(fields)
        except ProtocolError:
            self._settle(stream, entry_id)
            return
        error = JobError(code="job_failed", message=f"the job failed on {deliveries} deliveries", status=500)
        self._abandon(job, "training_failed", f"{error.message} (its workers died or lost Redis each time)")
        self._settle(stream, entry_id, job, JobOutcome(job_id=job.job_id, ok=False, error=error))

    def _handle_many(self, entries: list[tuple[str, bytes, dict[bytes, bytes]]]) -> None:
        """Entries read together: rejected and cancelled ones settle at once, scoring jobs run together (batched
        forwards, or the pooling engine's running batch), generations and token-level contrastive decodings join
        the running batch (or wait for room in it), the rest are heavy: each runs in its own thread, in slices."""
        scores: list[tuple[str, bytes, ScoreJob]] = []
        others: list[tuple[str, bytes, AnyJob]] = []
        try:
            for stream, entry_id, fields in entries:
                job = self._accept(stream, entry_id, fields)
                if job is None:
                    continue
                self._hold(stream, entry_id, job)  # held fresh by the heartbeat until settled
                lane = job_lane(job)
                if lane == SCORING_LANE:
                    assert isinstance(job, ScoreJob)
                    scores.append((stream, entry_id, job))
                elif lane == STEPPED_LANE:
                    assert isinstance(job, GenerateJob | ContrastJob)
                    self.waiting.append((stream, entry_id, job))
                else:
                    others.append((stream, entry_id, job))
            self._take([(s, e, j, 0) for s, e, j in scores])  # scored at once, or joining the pooling engine's batch
            self._admit()
            self._start_heavy(others)
            others = []
        finally:  # after a failure (Redis lost mid-way) none stays held but the running, the waiting and the heavy:
            # the visibility timeout hands the others to another delivery
            loose = [*others, *((s, e, j) for s, e, j in scores if self.running.get(j.job_id, ("", b""))[1] != e)]
            with self.held_lock:
                for stream, entry_id, _ in loose:
                    self.held.pop((stream, entry_id), None)

    # ------------------------------------------------------------ heavy jobs

    def _start_heavy(self, entries: list[tuple[str, bytes, AnyJob]]) -> None:
        """Start heavy jobs in threads of their own while there is room; the rest wait (held), the job of the tenant
        with the fewest heavy jobs running first."""
        with self.heavy_lock:
            self.heavy_queue += entries
            while self.heavy_queue and len(self.heavy_active) < self.settings.worker_heavy_jobs:
                running = list(self.heavy_active.values())
                pick = min(range(len(self.heavy_queue)), key=lambda i: running.count(self.heavy_queue[i][2].tenant))
                stream, entry_id, job = self.heavy_queue.pop(pick)
                self.heavy_active[job.job_id] = job.tenant
                threading.Thread(
                    target=self._run_heavy, args=(stream, entry_id, job), name=f"heavy-{job.kind}", daemon=True
                ).start()

    def _run_heavy(self, stream: str, entry_id: bytes, job: AnyJob) -> None:
        """One heavy job, in slices between which the main loop's work and other tenants' heavy jobs run; it ends
        within one slice of its cancellation or deadline (answered as such), or of the worker stopping (left for
        another delivery)."""
        turn = HeavyTurn(job.job_id, job.tenant, job.deadline, lambda: self._cancelled(job), self.stopping)
        started = time.perf_counter()
        outcome: JobOutcome | None = None

        def work() -> None:
            nonlocal outcome
            outcome = run_job(job, self.ctx)

        try:
            self.turns.run(turn, work)
        except Stopped as stop:
            log.info("job %s %s stopped after %d turns: %s", job.job_id, job.kind, turn.turns, stop)
            if stop.reason != "stopping":
                outcome = JobOutcome(job_id=job.job_id, ok=False, error=stopped_error(stop.reason, str(stop)))
        except Exception as exc:  # a bug or resource failure: this job alone
            log.exception("job %s failed", job.job_id)
            outcome = worker_error(job, exc)
        finally:
            with self.heavy_lock:
                self.heavy_active.pop(job.job_id, None)
        if outcome is None:  # the worker stops: the entry is let go, and another delivery runs the job
            with self.held_lock:
                self.held.pop((stream, entry_id), None)
        else:
            self._settle(stream, entry_id, job, outcome)
            log.info(
                "job %s %s %s in %.3fs (%d turns)",
                job.job_id,
                job.kind,
                "ok" if outcome.ok else outcome.error,
                time.perf_counter() - started,
                turn.turns,
            )
        self._start_heavy([])

    def _cancelled(self, job: AnyJob) -> bool:
        """Whether the job's client cancelled it (a 504, a client gone), or what it works for is gone (its
        handler says: a deleted head)."""
        if self.redis.exists(cancel_key(job.job_id)):
            return True
        gone = handler_for(job).gone
        return gone is not None and gone(job, self.redis)

    def _stop_left(self) -> None:
        """Generations, decodings and engine scorings whose clients left (the gateway set their cancel keys: a cut
        stream, a 504) or whose deadlines passed: those waiting are answered at once, those running leave their
        batches between two steps, the others going on."""
        jobs = [*(job for _, _, job in self.waiting), *self.in_flight.jobs.values()]
        if not jobs:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.exists(cancel_key(job.job_id))
        now = time.time()
        stops: dict[str, JobError] = {}
        for job, cancelled in zip(jobs, pipe.execute(), strict=True):
            if cancelled:
                stops[job.job_id] = stopped_error("cancelled", "the client went away; the job stopped")
            elif job.deadline is not None and now > job.deadline:
                stops[job.job_id] = stopped_error("deadline", "the job's deadline passed; it stopped")
        if not stops:
            return
        waiting = []
        for stream, entry_id, job in self.waiting:
            if job.job_id in stops:
                self._settle(stream, entry_id, job, JobOutcome(job_id=job.job_id, ok=False, error=stops[job.job_id]))
            else:
                waiting.append((stream, entry_id, job))
        self.waiting = waiting
        for job, outcome in self.in_flight.cancel(stops):
            self._finish(job, outcome)
        log.info("jobs stopped between steps: %s", {key: error.code for key, error in stops.items()})

    def _hold(self, stream: str, entry_id: bytes, job: AnyJob) -> None:
        with self.held_lock:
            self.held[(stream, entry_id)] = job

    def _admit(self) -> None:
        """Move waiting generations and decodings into the running batch while they fit its token budget."""
        used = sum(tokens for _, _, tokens in self.running.values())
        taken: list[tuple[str, bytes, ScoreJob | Stepped, int]] = []
        while self.waiting:
            stream, entry_id, job = self.waiting[0]
            tokens = stepped_tokens(job)
            if used and used + tokens > self.settings.worker_generation_tokens:  # a larger one runs when none else
                break
            self.waiting.pop(0)
            used += tokens
            taken.append((stream, entry_id, job, tokens))
        self._take(taken)

    def _take(self, taken: list[tuple[str, bytes, ScoreJob | Stepped, int]]) -> None:
        """Hand jobs to the engines' running batches; settle those that ended at once. A second entry of a job
        already running (a gateway re-submits after a Redis outage or failover) is settled without an outcome:
        the running one answers the job."""
        jobs = []
        for stream, entry_id, one, tokens in taken:
            if one.job_id in self.running:
                if self.running[one.job_id][1] != entry_id:  # its own entry reclaimed is not a second entry
                    log.info("job %s entry %s is a duplicate of the running one; dropped", one.job_id, entry_id)
                    self._settle(stream, entry_id)
                continue
            self.running[one.job_id] = (stream, entry_id, tokens)
            jobs.append(one)
        if not jobs:
            return
        done: list[tuple[AnyJob, JobOutcome]]
        try:
            done = self.in_flight.admit(jobs)
        except Exception as exc:  # a bug: the jobs not in a running batch fail, the worker goes on
            log.exception("jobs %s could not be admitted", [one.job_id for one in jobs])
            done = [(one, worker_error(one, exc)) for one in jobs if one.job_id not in self.in_flight.jobs]
        for finished, outcome in done:
            self._finish(finished, outcome)

    def _advance(self) -> None:
        """One step of the running batches; settle the jobs that ended, and let waiting ones in."""
        for job, outcome in self.in_flight.advance():
            self._finish(job, outcome)
        self._admit()

    def _finish(self, job: AnyJob, outcome: JobOutcome) -> None:
        if job.job_id not in self.running:  # already answered (a failure settled it): one answer per job
            log.warning("job %s finished again; its first outcome stands", job.job_id)
            return
        stream, entry_id, _ = self.running.pop(job.job_id)
        self._settle(stream, entry_id, job, outcome)
        log.info("job %s %s %s", job.job_id, job.kind, "ok" if outcome.ok else outcome.error)

    def _accept(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> AnyJob | None:
        """The entry's job, or None when it was rejected (dead-lettered) or cancelled (answered as such)."""
        try:
            job = decode_job(fields)
        except ProtocolError as exc:
            log.warning("rejected stream entry %s on %s: %s", entry_id, stream, exc)
            self.redis.xadd(
                DEAD_LETTER_STREAM, {"stream": stream, "entry": entry_id, "reason": str(exc)[:500]}, maxlen=10000
            )
            self._settle(stream, entry_id)
            return None
        if self.redis.exists(cancel_key(job.job_id)):
            error = stopped_error("cancelled", "the client went away before the job started")
        elif job.deadline is not None and time.time() > job.deadline:
            error = stopped_error("deadline", "the job's deadline passed before it started")
        else:
            return job
        log.info("job %s skipped: %s", job.job_id, error.message)
        self._abandon(job, error.code, error.message)
        self._settle(stream, entry_id, job, JobOutcome(job_id=job.job_id, ok=False, error=error))
        return None

    def _abandon(self, job: AnyJob, code: str, message: str) -> None:
        """Tell the job's handler that it is given up without running to its end (e.g. a head then fails)."""
        abandon = handler_for(job).abandon
        if abandon is not None:
            try:
                abandon(job, self.ctx, code, message)
            except REDIS_ERRORS:
                log.warning("job %s: its handler could not record that it was given up", job.job_id)

    def _settle(
        self, stream: str, entry_id: bytes, job: AnyJob | None = None, outcome: JobOutcome | None = None
    ) -> None:
        """Store the outcome (if any), then acknowledge and delete the entry, in one transaction: the stream
        only ever holds jobs that are waiting or running, so its length is the queue depth. Then wake the waiters
        (a lost notice costs a waiter one RECHECK_S: it re-reads the outcome key). A job that lost Redis mid-way
        is not settled: it stays pending, and another delivery answers it after the visibility timeout."""
        if outcome is not None and outcome.error is not None and outcome.error.code == REDIS_LOST:
            log.warning("job entry %s on %s left for another delivery: %s", entry_id, stream, outcome.error.message)
            with self.held_lock:
                self.held.pop((stream, entry_id), None)
            return
        pipe = self.redis.pipeline(transaction=True)
        if job is not None and outcome is not None:
            outcome.worker = self.id
            pipe.set(job_outcome_key(job.job_id), outcome.model_dump_json())  # no TTL: eviction never takes it
            keep_until(pipe, time.time() + OUTCOME_TTL_S, job_outcome_key(job.job_id))
        _release(pipe, stream, entry_id, job if outcome is not None else None)
        try:
            pipe.execute()
            if job is not None and outcome is not None:
                self.redis.publish(DONE_CHANNEL, job.job_id)
        except REDIS_ERRORS as exc:  # left pending: another delivery answers it after the timeout
            if job is not None and storage_full(exc):
                self._settle_full(stream, entry_id, job)
            else:
                log.warning("job entry %s on %s not settled (%s); left for another delivery", entry_id, stream, exc)
        finally:
            with self.held_lock:
                self.held.pop((stream, entry_id), None)

    def _settle_full(self, stream: str, entry_id: bytes, job: AnyJob) -> None:
        """Redis is full and refused the outcome: another delivery would find it full too. The entry is let go
        (XACK, XDEL and DEL free memory, and a full Redis takes them) and the waiters are told on the done channel
        that the job found the store full. Not a transaction: a full Redis refuses every command queued in one."""
        pipe = self.redis.pipeline(transaction=False)
        _release(pipe, stream, entry_id, job)
        try:
            pipe.execute()
            self.redis.publish(DONE_CHANNEL, full_notice(job.job_id))
            log.warning("job %s settled without its outcome: Redis is full", job.job_id)
        except REDIS_ERRORS as exc:
            log.warning("job entry %s on %s not settled (%s); left for another delivery", entry_id, stream, exc)

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self.stopping.set()

    def close(self) -> None:
        """Shut down the backends' engines (vLLM's processes); their children die with them in any case."""
        for name, backend in self.backends.items():
            close = getattr(backend, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # one engine failing to stop must not keep the others running
                    log.exception("closing %s failed", name)


def _release(pipe: Any, stream: str, entry_id: bytes, job: AnyJob | None) -> None:
    """Queue what lets a job go: its score's inflight mark (when answered), its entry's XACK and XDEL."""
    if isinstance(job, ScoreJob):
        forget(pipe, inflight_key(job.tenant, job.record_id))
    pipe.xack(stream, CONSUMER_GROUP, entry_id)
    pipe.xdel(stream, entry_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description="Run a logprobe worker.")
    parser.add_argument("--model", action="append", help="serve only these configured models (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = WorkerSettings()
    torch.set_num_threads(settings.worker_threads)
    arm_children()
    worker = Worker(settings, args.model)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    try:
        worker.serve()
    finally:
        worker.close()
