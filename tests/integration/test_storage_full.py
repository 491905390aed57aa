"""A full Redis (its memory limit reached, nothing it may evict): writes are answered 503 `storage_full` with a
Retry-After, and /readyz says so; once there is room again, everything answers as before."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from app.launcher.local_service import LocalService
from bench.texts import PASSAGE
from tests.conftest import MODEL
from workers.contract.keys import jobs_stream


@pytest.fixture
def full_redis(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """The session's Redis with `noeviction` and a memory limit of 1 MiB, below what it already holds: full, as a
    deployment's Redis is once its data reaches `maxmemory`. Its settings are given back after the test."""
    before = {k: v for k, v in redis_client.config_get("maxmemory*").items() if k in ("maxmemory", "maxmemory-policy")}
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", 1024 * 1024)
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            redis_client.set("lp:test:one-more", b"x")
        yield redis_client
    finally:
        redis_client.config_set("maxmemory", before["maxmemory"])
        redis_client.config_set("maxmemory-policy", before["maxmemory-policy"])


def test_a_full_redis_answers_503_storage_full_and_readyz_says_so(
    alpha: httpx.Client, service: str, full_redis: redis.Redis
) -> None:
    text = f"A full store cannot take this sentence ({uuid.uuid4().hex[:8]})."
    refused = alpha.post("/v1/score", json={"model": MODEL, "text": text})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "storage_full"
    assert int(refused.headers["Retry-After"]) > 0

    ready = httpx.get(f"{service}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["storage_full"] is True
    assert int(ready.headers["Retry-After"]) > 0


def test_a_record_too_large_for_the_room_left_is_503_storage_full_not_a_worker_error(
    alpha: httpx.Client, redis_client: redis.Redis
) -> None:
    """The job is accepted (its entry is small) but the worker cannot keep the record: the same 503."""
    before = {k: v for k, v in redis_client.config_get("maxmemory*").items() if k in ("maxmemory", "maxmemory-policy")}
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", int(redis_client.info("memory")["used_memory"]) + 256 * 1024)
    try:  # ~240 positions at ~2.5 KB each: more than the room left
        refused = alpha.post("/v1/score", json={"model": MODEL, "text": f"{uuid.uuid4().hex} " + PASSAGE * 3})
    finally:
        redis_client.config_set("maxmemory", before["maxmemory"])
        redis_client.config_set("maxmemory-policy", before["maxmemory-policy"])
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "storage_full" and int(refused.headers["Retry-After"]) > 0


def test_with_room_again_scores_and_readyz_answer_as_before(alpha: httpx.Client, service: str) -> None:
    """Runs after the full case: its fixture gave the room back."""
    text = f"Room again for this sentence ({uuid.uuid4().hex[:8]})."
    scored = alpha.post("/v1/score", json={"model": MODEL, "text": text})
    assert scored.status_code == 200, scored.text
    ready = httpx.get(f"{service}/readyz", timeout=30).json()
    assert ready["storage_full"] is False


def test_a_worker_that_cannot_store_even_its_outcome_settles_the_job_and_its_client_gets_503(
    alpha: httpx.Client, redis_client: redis.Redis, local_service: LocalService
) -> None:
    """Redis fills up while the job waits: the worker can keep neither the record nor the outcome. It lets the
    entry go (XACK/XDEL free memory) and says so on the done channel; the client gets 503 storage_full at once, not
    a 424 after three deliveries' visibility timeouts, and nothing of the job is left in the stream."""
    before = {k: v for k, v in redis_client.config_get("maxmemory*").items() if k in ("maxmemory", "maxmemory-policy")}
    answers: list[httpx.Response] = []
    text = f"{uuid.uuid4().hex} A text that finds the store full."
    for worker in local_service.workers:
        os.kill(worker.pid, signal.SIGSTOP)
    try:
        asking = threading.Thread(
            target=lambda: answers.append(alpha.post("/v1/score", json={"model": MODEL, "text": text}, timeout=90))
        )
        asking.start()
        deadline = time.monotonic() + 30  # a bound: until the job waits in its stream
        while not redis_client.xlen(jobs_stream(MODEL)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert redis_client.xlen(jobs_stream(MODEL)) == 1
        redis_client.config_set("maxmemory-policy", "noeviction")
        redis_client.config_set("maxmemory", 1024 * 1024)  # below what it holds: full
    finally:
        for worker in local_service.workers:
            os.kill(worker.pid, signal.SIGCONT)
    try:
        asking.join(timeout=120)
    finally:
        redis_client.config_set("maxmemory", before["maxmemory"])
        redis_client.config_set("maxmemory-policy", before["maxmemory-policy"])
    assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [(503, "storage_full")]
    assert redis_client.xlen(jobs_stream(MODEL)) == 0
