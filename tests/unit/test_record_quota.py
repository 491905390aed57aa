"""A tenant's quota of record bytes (#30 item 6): the worker that writes a record counts its bytes in the tenant's
day counter (a deadline, not a TTL), and the gateway refuses a job that would write another record once the counted
days hold the quota, for that tenant only. A real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio

from app.launcher.embedded import EmbeddedRedis
from app.platform.errors import ApiError
from app.serving.usage import RecordQuota
from workers.contract.jobs import LensJob, ScoreJob
from workers.contract.keys import record_key
from workers.contract.lifetimes import expiry_key
from workers.contract.names import record_id
from workers.contract.usage import DAY_S, usage_key
from workers.record_store import RecordWriter

TTL_S = 3 * DAY_S


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("quota") / "redis")
    try:
        yield embedded.start()
    finally:
        embedded.stop()


def score_job(tenant: str) -> ScoreJob:
    rid = record_id(b"s", tenant, "f", [1, 2], {})
    return ScoreJob(job_id="j", tenant=tenant, model="m", fingerprint="f", record_id=rid, token_ids=[1, 2])


def test_written_records_count_against_their_tenants_quota(url: str) -> None:
    client = redis.Redis.from_url(url)
    writer = RecordWriter(client, b"s", TTL_S)
    fields: dict[str, bytes | str] = {"meta": "{}", "stats": b"x" * 600, "hidden": b"y" * 400}
    for n in range(3):
        writer._write_record("alpha", record_key("alpha", record_id(b"s", "alpha", "f", [n], {})), fields)
    day = int(time.time() // DAY_S)
    assert int(client.get(usage_key("alpha", day)) or 0) == 3 * 1002
    assert client.ttl(usage_key("alpha", day)) == -1  # no TTL: eviction cannot reset it
    deadline = client.zscore(expiry_key(usage_key("alpha", day)), usage_key("alpha", day))
    assert deadline == (day + 1) * DAY_S + TTL_S

    async def check(limit: int, job: ScoreJob | LensJob) -> ApiError | None:
        async_client = redis.asyncio.Redis.from_url(url)
        try:
            await RecordQuota(limit, TTL_S).check(async_client, job)
        except ApiError as exc:
            return exc
        finally:
            await async_client.aclose()
        return None

    refused = asyncio.run(check(3006, score_job("alpha")))
    assert refused is not None
    assert (refused.status, refused.code, refused.param) == (429, "quota_exceeded", "record_bytes")
    assert 0 < int(refused.headers["Retry-After"]) <= DAY_S + TTL_S
    assert asyncio.run(check(3007, score_job("alpha"))) is None  # under the quota
    assert asyncio.run(check(3006, score_job("beta"))) is None  # another tenant's records are theirs
    assert asyncio.run(check(0, score_job("alpha"))) is None  # 0: no quota
    lens = LensJob(job_id="l", tenant="alpha", model="m", fingerprint="f", token_ids=[1, 2], layers=[0])
    assert asyncio.run(check(3006, lens)) is None  # writes no record
