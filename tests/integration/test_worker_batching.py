"""Scoring jobs read together run as batched forwards, and nothing changes for correctness: each record equals
the one scored alone, a bad job fails alone, and a worker killed while holding a batch loses no job."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import redis

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL
from workers.backends.hf import HFBackend
from workers.config import ModelSpec
from workers.jobs import JobExecutor
from workers.protocol import (
    CONSUMER_GROUP,
    ScoreJob,
    decode_meta,
    decode_stats,
    jobs_stream,
    record_id,
    record_key,
)

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
    raw_meta, raw_stats, hidden = client.hmget(record_key(job.tenant, job.record_id), ["meta", "stats", "hidden"])
    meta = decode_meta(raw_meta or b"")
    return decode_stats(raw_stats or b"", len(meta.token_ids) - 1, meta.topk), hidden or b""


def test_a_batch_of_mixed_lengths_stores_the_records_scored_alone(backend: HFBackend, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    executor = JobExecutor(client, {MODEL: backend}, SECRET, 600)
    batched, alone = _jobs(backend, "batchtest"), _jobs(backend, "alonetest")
    outcomes = executor.run_scores(batched)
    assert [o.ok for o in outcomes] == [True] * len(TEXTS)
    for job in alone:
        assert executor.run(job).ok
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
    executor = JobExecutor(client, {MODEL: backend}, SECRET, 600)
    jobs = _jobs(backend, "poisontest")
    jobs[2] = jobs[2].model_copy(update={"token_ids": [1, 2, 10**9]})
    jobs[3] = jobs[3].model_copy(update={"fingerprint": "another-model"})
    outcomes = executor.run_scores(jobs)
    assert [o.ok for o in outcomes] == [True, True, False, False, True]
    assert (outcomes[2].error and outcomes[2].error.code, outcomes[3].error and outcomes[3].error.code) == (
        "invalid_token_ids",
        "model_changed",
    )


# ---------------------------------------------------------------- a worker killed holding a batch


@pytest.fixture(scope="module")
def pair() -> Iterator[LocalService]:
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_WORKER_THREADS": "1",
        "LOGPROBE_WORKER_BATCH_JOBS": "16",
        "LOGPROBE_VISIBILITY_TIMEOUT_S": "5",
    }
    with LocalService(env=env, log_dir=ARTIFACTS / "batching", workers=2) as service:
        yield service


def test_kill_9_of_a_worker_holding_a_batch_loses_no_job(pair: LocalService) -> None:
    r = redis.Redis.from_url(pair.redis_url)
    stream = jobs_stream(MODEL)
    victim, survivor = pair.workers
    survivor.send_signal(signal.SIGSTOP)  # the victim takes the jobs
    victim.send_signal(signal.SIGSTOP)
    texts = [f"Job {i} of sixteen, held by one worker when it dies: " + "word " * (5 + i) for i in range(16)]
    with httpx.Client(base_url=pair.base_url, timeout=300) as client, ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client.post, "/v1/score", json={"model": MODEL, "text": t}) for t in texts]
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
        survivor.send_signal(signal.SIGCONT)
        answers = [f.result() for f in futures]
    assert held >= 12  # one read took most of the jobs: they were in flight together when it died
    assert [a.status_code for a in answers] == [200] * 16
    assert len({a.json()["record_id"] for a in answers}) == 16  # each client got its own answer, once
    assert r.xlen(stream) == 0 and r.xpending(stream, CONSUMER_GROUP)["pending"] == 0
    assert "reclaimed" in (ARTIFACTS / "batching" / "worker1.log").read_text()
