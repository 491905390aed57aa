"""A full Redis (its memory limit reached, nothing it may evict): writes are answered 503 `storage_full` with a
Retry-After, and /readyz says so; once there is room again, everything answers as before."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from bench.texts import PASSAGE
from tests.conftest import MODEL


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
