"""What a tenant's records take is counted where they are written (#30 item 6): a scored record and a byte-level
record each add their stored bytes to the tenant's day counter, another tenant's counter is untouched. The session's
gateway, worker and Redis, the packaged model."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import redis

from tests.conftest import MODEL
from workers.contract.usage import DAY_S, usage_key

pytestmark = pytest.mark.slow


def counted(r: redis.Redis, tenant: str) -> int:
    return int(r.get(usage_key(tenant, int(time.time() // DAY_S))) or 0)


def test_records_and_byte_records_count_their_bytes(alpha: httpx.Client, redis_client: redis.Redis) -> None:
    text = f"Counted bytes ({uuid.uuid4().hex})."
    before, other = counted(redis_client, "alpha"), counted(redis_client, "beta")
    scored = alpha.post("/v1/score", json={"model": MODEL, "text": text}).json()
    after_score = counted(redis_client, "alpha")
    stored = sum(len(v) for v in redis_client.hgetall(f"lp:rec:alpha:{scored['record_id']}").values())
    assert after_score - before == stored  # the record's fields, as written
    byte_level = alpha.post("/v1/bytes", json={"model": MODEL, "text": text})
    assert byte_level.status_code == 200, byte_level.text
    assert counted(redis_client, "alpha") > after_score
    assert counted(redis_client, "beta") == other
