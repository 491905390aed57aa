"""Durable keys (heads, calibrations, tables, batches, job outcomes, rate counters) carry no Redis TTL, so that
`volatile-lru` never evicts them, and their lifetime still ends: a deadline in their slot's expiry set, which the
gateways' sweep enforces (workers/contract/lifetimes.py, app/platform/expiry.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from app.platform.expiry import sweep
from app.platform.limits import charge
from tests.conftest import MODEL
from workers.contract.heartbeats import live_ids
from workers.contract.keys import alive_key, attribution_key, serving_key
from workers.contract.lifetimes import CLAIM_UNTIL, EXPIRY_SETS, READ_LIVE, announce, expiry_key, keep_until


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


def assert_durable(r: redis.Redis, key: str) -> float:
    """No TTL, and a deadline in the future; the deadline."""
    deadline = r.zscore(expiry_key(key), key)
    assert r.ttl(key) == -1 and deadline is not None and deadline > time.time(), key
    return float(deadline)


async def test_the_sweep_deletes_a_durable_key_once_its_deadline_passes_and_not_before(
    client: aioredis.Redis,
) -> None:
    tag = f"lifetimes-{uuid.uuid4().hex[:8]}"
    early, late = f"lp:test:{{{tag}}}:early", f"lp:test:{{{tag}}}:late"
    pipe = client.pipeline(transaction=True)
    pipe.set(early, 1)
    pipe.set(late, 1)
    keep_until(pipe, 1000.0, early)  # deadlines long past, so that `now` below reaches them and nothing else
    keep_until(pipe, 3000.0, late)
    await pipe.execute()
    await announce(client, early, late)
    assert await client.ttl(early) == -1 and await client.ttl(late) == -1

    assert await sweep(client, now=2000.0) >= 1
    assert not await client.exists(early) and await client.exists(late)
    assert await client.sismember(EXPIRY_SETS, expiry_key(late))

    await sweep(client, now=4000.0)
    assert not await client.exists(late)
    assert not await client.exists(expiry_key(late)) and not await client.sismember(EXPIRY_SETS, expiry_key(late))


async def test_rate_counters_and_job_outcomes_carry_deadlines_not_ttls(
    client: aioredis.Redis, alpha: httpx.Client, redis_client: redis.Redis
) -> None:
    tenant = f"rates-{uuid.uuid4().hex[:8]}"
    await charge(client, tenant, "tokens", 5, 100)
    (counter,) = [k.decode() for k in redis_client.scan_iter(match=f"lp:rate:{{{tenant}}}:tokens:*")]
    assert_durable(redis_client, counter)

    scored = alpha.post("/v1/score", json={"model": MODEL, "text": f"An outcome to keep ({uuid.uuid4().hex})."})
    assert scored.status_code == 200
    outcomes = [k.decode() for k in redis_client.scan_iter(match="lp:{jobs}:job:*", count=1000)]
    assert outcomes
    for key in outcomes:
        assert_durable(redis_client, key)


def test_the_gateways_sweep_ends_a_table_whose_lifetime_is_over(alpha: httpx.Client, redis_client: redis.Redis) -> None:
    name = f"brief-{uuid.uuid4().hex[:8]}"
    table = alpha.put(f"/v1/frequency-tables/{name}", json={"model": MODEL, "texts": ["a short life"]})
    assert table.status_code == 200, table.text
    (key,) = [k.decode() for k in redis_client.scan_iter(match=f"lp:freq:{{alpha}}:*:{name}")]
    assert assert_durable(redis_client, key) == table.json()["expires_at"]

    redis_client.zadd(expiry_key(key), {key: time.time() - 1})  # its lifetime over, as 30 days later
    deadline = time.monotonic() + 300  # the gateway sweeps every minute: a bound on a stuck sweep
    while alpha.get(f"/v1/frequency-tables/{name}", params={"model": MODEL}).status_code != 404:
        assert time.monotonic() < deadline, "the gateway never swept the table"
        time.sleep(1)
    assert not redis_client.exists(key)
    assert name not in {t["name"] for t in alpha.get("/v1/frequency-tables").json()["data"]}


async def test_a_mark_with_a_deadline_is_held_by_one_owner_until_it_passes(client: aioredis.Redis) -> None:
    """Leases and inflight marks (CLAIM_UNTIL, READ_LIVE): no TTL; another owner is refused until the deadline,
    then takes it; the holder extends it; the sweep deletes what lapsed."""
    key = f"lp:{{jobs}}:lease:test:{uuid.uuid4().hex[:8]}"
    marks = [key, expiry_key(key)]
    claim, read = client.register_script(CLAIM_UNTIL), client.register_script(READ_LIVE)
    assert await claim(keys=marks, args=["a", 1100.0, 1000.0]) == 1
    assert await client.ttl(key) == -1
    assert await claim(keys=marks, args=["b", 1200.0, 1050.0]) == 0  # a holds it
    assert await read(keys=marks, args=[1050.0]) == b"a"
    assert await claim(keys=marks, args=["a", 1300.0, 1099.0]) == 1  # a extends it
    assert await claim(keys=marks, args=["b", 1400.0, 1200.0]) == 0
    assert await read(keys=marks, args=[1300.0]) is None  # lapsed: reads as absent
    assert await claim(keys=marks, args=["b", 1400.0, 1300.0]) == 1  # and another takes it
    assert await read(keys=marks, args=[1350.0]) == b"b"
    await sweep(client, now=1500.0)
    assert not await client.exists(key) and await client.zscore(expiry_key(key), key) is None


def test_short_lived_state_carries_deadlines_not_ttls(alpha: httpx.Client, redis_client: redis.Redis) -> None:
    """A worker's heartbeat and an attribution's answer: durable keys (#30 item 7)."""
    assert redis_client.ttl(alive_key(MODEL)) == -1 and live_ids(redis_client, alive_key(MODEL), time.time())
    assert redis_client.ttl(serving_key(MODEL)) == -1
    text = f"A lamp, a ladder and a long afternoon ({uuid.uuid4().hex[:8]})."
    before = set(redis_client.scan_iter(match=attribution_key("*"), count=1000))
    body = {"model": MODEL, "text": text, "positions": [3], "method": "occlusion"}
    attributed = alpha.post("/v1/analysis/attribution", json=body)
    assert attributed.status_code == 200, attributed.text
    (new,) = set(redis_client.scan_iter(match=attribution_key("*"), count=1000)) - before
    assert_durable(redis_client, new.decode())
