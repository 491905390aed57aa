"""Jobs read together run together, and nothing changes for correctness: scoring jobs share batched forwards and
each record equals the one scored alone; generations that join a running batch step by step sample what each
samples alone; a bad job fails alone; a worker killed while holding a batch loses no job."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import redis
import torch

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL
from workers.backends.hf import HFBackend
from workers.config import ModelSpec
from workers.contract.jobs import GenerateJob, Sampling, ScoreJob
from workers.contract.keys import CONSUMER_GROUP, SCORING_LANE, STEPPED_LANE, jobs_stream, record_key
from workers.contract.names import record_id
from workers.contract.records import decode_meta, decode_stats
from workers.generations import Finished
from workers.handlers.base import Context
from workers.handlers.registry import run_job
from workers.handlers.score import score_together
from workers.in_flight import InFlight

pytestmark = pytest.mark.slow

TEXTS = [
    "Short.",
    "A somewhat longer sentence about the harbour and its lighthouse keeper.",
    "The engineers said the gradient was too steep; the villagers said winter made the roads impassable. " * 3,
    "Rivers: the Nile, the Amazon, the Yangtze.",
    "Once upon a time there was a small town by the sea where every evening the fishing boats came home " * 2,
]
SECRET = b"test-secret"


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    return HFBackend(ModelSpec(name=MODEL, dtype="float32"), DATA_DIR)


def _jobs(backend: HFBackend, tenant: str) -> list[ScoreJob]:
    card = backend.card
    out = []
    for i, text in enumerate(TEXTS):
        ids = backend.encode(text)
        rid = record_id(SECRET, tenant, card.fingerprint, ids, {"kind": "score"})
        out.append(
            ScoreJob(
                job_id=f"{tenant}-{i}",
                tenant=tenant,
                model=MODEL,
                fingerprint=card.fingerprint,
                record_id=rid,
                token_ids=ids,
            )
        )
    return out


def _stored(client: redis.Redis, job: ScoreJob) -> tuple[dict[str, np.ndarray], bytes]:
    return _stored_record(client, job.tenant, job.record_id)


def _stored_record(client: redis.Redis, tenant: str, rid: str) -> tuple[dict[str, np.ndarray], bytes]:
    raw_meta, raw_stats, hidden = client.hmget(record_key(tenant, rid), ["meta", "stats", "hidden"])
    meta = decode_meta(raw_meta or b"")
    return decode_stats(raw_stats or b"", len(meta.token_ids) - 1, meta.topk), hidden or b""


def test_a_batch_of_mixed_lengths_stores_the_records_scored_alone(backend: HFBackend, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ctx = Context.build(client, {MODEL: backend}, SECRET, 600)
    batched, alone = _jobs(backend, "batchtest"), _jobs(backend, "alonetest")
    outcomes = score_together(batched, ctx)
    assert [o.ok for o in outcomes] == [True] * len(TEXTS)
    for job in alone:
        assert run_job(job, ctx).ok
    for b, a in zip(batched, alone, strict=True):
        (b_stats, _), (a_stats, _) = _stored(client, b), _stored(client, a)
        assert np.abs(b_stats["logprob"] - a_stats["logprob"]).max() <= 1e-5
        assert np.allclose(b_stats["entropy"], a_stats["entropy"], rtol=1e-5, atol=0)
        assert (b_stats["rank"] == a_stats["rank"]).all()
    hidden = backend.hidden_states_batch([job.token_ids for job in batched])
    for job, states in zip(batched, hidden, strict=True):
        assert states.shape[0] == len(job.token_ids)  # padding never becomes a position
        assert float((states - backend.hidden_states(job.token_ids)).abs().max()) <= 1e-4


def test_a_bad_job_in_a_batch_fails_alone(backend: HFBackend, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ctx = Context.build(client, {MODEL: backend}, SECRET, 600)
    jobs = _jobs(backend, "poisontest")
    jobs[2] = jobs[2].model_copy(update={"token_ids": [1, 2, 10**9]})
    jobs[3] = jobs[3].model_copy(update={"fingerprint": "another-model"})
    outcomes = score_together(jobs, ctx)
    assert [o.ok for o in outcomes] == [True, True, False, False, True]
    assert (outcomes[2].error and outcomes[2].error.code, outcomes[3].error and outcomes[3].error.code) == (
        "invalid_token_ids",
        "model_changed",
    )


def _generations(backend: HFBackend, tenant: str) -> list[GenerateJob]:
    card = backend.card
    samplings = [
        Sampling(max_tokens=14, temperature=0.0, top_p=1.0),
        Sampling(max_tokens=22, temperature=0.8, top_p=0.9, seed=7),
        Sampling(max_tokens=9, temperature=1.0, top_p=1.0, seed=3, stop=["e"]),
        Sampling(max_tokens=17, temperature=0.7, top_p=1.0, seed=11, repetition_penalty=1.3, frequency_penalty=0.5),
        Sampling(max_tokens=6, temperature=0.0, top_p=1.0, stop=[","]),
    ]
    return [
        GenerateJob(
            job_id=f"{tenant}-{i}",
            tenant=tenant,
            model=MODEL,
            fingerprint=card.fingerprint,
            prompt_ids=backend.encode(text),
            sampling=sampling,
        )
        for i, (text, sampling) in enumerate(zip(TEXTS, samplings, strict=True))
    ]


def test_generations_joining_a_running_batch_sample_what_each_samples_alone(backend: HFBackend, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ctx = Context.build(client, {MODEL: backend}, SECRET, 600)
    jobs = _generations(backend, "gentest")
    running = InFlight(ctx)
    alone = {job.job_id: running.run([job])[0] for job in jobs}
    assert running.admit(jobs[:2]) == []
    together, steps, sizes = {}, 0, []
    while len(together) < len(jobs):
        if steps == 2:
            assert running.admit(jobs[2:3]) == []  # joins two running sequences
        if steps == 5:
            assert running.admit(jobs[3:]) == []  # two more join, one after another has left
        sizes.append(len(running))
        together.update((job.job_id, outcome) for job, outcome in running.advance())
        steps += 1
    assert max(sizes) >= 3  # they ran together, joining and leaving
    for job in jobs:
        a, b = alone[job.job_id], together[job.job_id]
        assert b.ok and (b.completion_ids, b.finish_reason, b.record_id) == (
            a.completion_ids,
            a.finish_reason,
            a.record_id,
        )
    assert {together[j.job_id].finish_reason for j in jobs} == {"stop", "length"}
    # The records come from the decoding loop's own hidden states (no second forward): they equal the text scored
    # alone up to the rounding of incremental decoding against one whole-sequence forward (float32).
    for job in jobs:
        outcome = together[job.job_id]
        full = job.prompt_ids + (outcome.completion_ids or [])
        stats, _ = _stored_record(client, job.tenant, outcome.record_id or "")
        alone_rows = backend.head.logprobs(backend.hidden_states(full)[:-1])
        expected = alone_rows[torch.arange(len(full) - 1), torch.tensor(full[1:])].numpy()
        assert np.abs(stats["logprob"] - expected).max() <= 1e-4


def test_a_bad_generation_is_refused_alone_while_the_batch_runs(backend: HFBackend, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ctx = Context.build(client, {MODEL: backend}, SECRET, 600)
    jobs = _generations(backend, "genpoison")
    jobs[1] = jobs[1].model_copy(update={"prompt_ids": [1, 2, 10**9]})
    running = InFlight(ctx)
    refused = running.admit(jobs)
    assert [(o.job_id, o.error and o.error.code) for _, o in refused] == [("genpoison-1", "invalid_token_ids")]
    done = {}
    while len(running):
        done.update((job.job_id, outcome) for job, outcome in running.advance())
    assert sorted(done) == ["genpoison-0", "genpoison-2", "genpoison-3", "genpoison-4"]
    assert all(o.ok for o in done.values())


def test_a_generation_whose_captured_states_are_bad_fails_alone(
    backend: HFBackend, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generations whose decoding handed back its states are stored with shared statistics; one whose states are
    short (a capture gone wrong) fails alone, and the others' records are those made alone (the shared statistics
    failed over to each one's own)."""
    client = redis.Redis.from_url(redis_url)
    ctx = Context.build(client, {MODEL: backend}, SECRET, 600)
    jobs, alone_jobs = _generations(backend, "genbadstates"), _generations(backend, "genalone")
    running = InFlight(ctx)
    alone = [running.run([job])[0] for job in alone_jobs]
    pool = running._generation_pool(MODEL)
    advance = pool.advance

    def short_states() -> list[Finished]:
        finished = advance()
        for f in finished:
            if f.key == jobs[1].job_id and f.states is not None:
                f.states = f.states[:-2]
        return finished

    monkeypatch.setattr(pool, "advance", short_states)
    assert running.admit(list(jobs)) == []
    done = {}
    while len(running):
        done.update((job.job_id, outcome) for job, outcome in running.advance())
    outcomes = [done[job.job_id] for job in jobs]
    assert [o.ok for o in outcomes] == [True, False, True, True, True]
    assert outcomes[1].error is not None and outcomes[1].error.code == "worker_error"
    for i in (0, 2, 3, 4):
        a, b = alone[i], outcomes[i]
        assert (b.completion_ids, b.finish_reason) == (a.completion_ids, a.finish_reason)
        ours, _ = _stored_record(client, jobs[i].tenant, b.record_id or "")
        theirs, _ = _stored_record(client, alone_jobs[i].tenant, a.record_id or "")
        for name in ("logprob", "entropy"):  # a batch's decoding against one alone: float32 rounding
            assert np.abs(ours[name] - theirs[name]).max() <= 1e-4, name


# ---------------------------------------------------------------- a worker killed holding a batch


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[LocalService]:
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_WORKER_THREADS": "1",
        "LOGPROBE_WORKER_BATCH_JOBS": "16",
        "LOGPROBE_VISIBILITY_TIMEOUT_S": "5",
    }
    logs = ARTIFACTS / "batching" / request.node.callspec.id.strip("/").replace("/", "-")
    with LocalService(env=env, log_dir=logs, workers=2) as service:
        yield service


@pytest.mark.parametrize("route", ["/v1/score", "/v1/generate"])
def test_kill_9_of_a_worker_holding_a_batch_loses_no_job(pair: LocalService, route: str) -> None:
    r = redis.Redis.from_url(pair.redis_url)
    stream = jobs_stream(MODEL, SCORING_LANE if route == "/v1/score" else STEPPED_LANE)
    victim, survivor = pair.workers
    survivor.send_signal(signal.SIGSTOP)  # the victim takes the jobs
    victim.send_signal(signal.SIGSTOP)
    texts = [f"Job {i} of sixteen, held by one worker when it dies: " + "word " * (5 + i) for i in range(16)]
    bodies = [
        {"model": MODEL, "text": t} if route == "/v1/score" else {"model": MODEL, "prompt": t, "max_tokens": 24}
        for t in texts
    ]
    with httpx.Client(base_url=pair.base_url, timeout=300) as client, ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client.post, route, json=body) for body in bodies]
        deadline = time.monotonic() + 60  # a bound on a stuck gateway, not a speed check
        while r.xlen(stream) < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        victim.send_signal(signal.SIGCONT)  # it reads what it can (up to 16 at once) and dies holding it
        held = 0
        while held < 12 and time.monotonic() < deadline:
            consumers = r.xpending(stream, CONSUMER_GROUP)["consumers"]
            held = max((int(c["pending"]) for c in consumers), default=0)
            time.sleep(0.005)
        victim.kill()
        victim.wait()
        survivor.send_signal(signal.SIGCONT)
        answers = [f.result() for f in futures]
    assert held >= 12  # one read took most of the jobs: they were in flight together when it died
    assert [a.status_code for a in answers] == [200] * 16
    assert len({a.json()["record_id"] for a in answers}) == 16  # each client got its own answer, once
    assert r.xlen(stream) == 0 and r.xpending(stream, CONSUMER_GROUP)["pending"] == 0
    assert "reclaimed" in (pair.log_dir / "worker1.log").read_text()
    if route == "/v1/generate":
        assert {a.json()["finish_reason"] for a in answers} <= {"stop", "length"}
