"""A job whose wait times out (504), or whose caller is cancelled, is cancelled for the worker too (#29): the
gateway sets its cancel key, which a worker reads before starting it and heavy work reads between slices
(tests/integration/test_lanes.py shows a heavy job stop on it). A real Redis, the gateway's own JobQueue, no worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio

from app.launcher.embedded import EmbeddedRedis
from app.platform.errors import ApiError
from app.serving.jobs import JobQueue
from workers.contract.jobs import LensJob
from workers.contract.keys import cancel_key


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("timeout") / "redis")
    try:
        yield embedded.start()
    finally:
        embedded.stop()


def test_a_wait_that_times_out_cancels_its_job_and_carries_its_deadline(url: str) -> None:
    job = LensJob(job_id="slow-one", tenant="alpha", model="m", fingerprint="f", token_ids=[1, 2], layers=[0])

    async def run() -> tuple[ApiError, bool]:
        client = redis.asyncio.Redis.from_url(url)
        queue = JobQueue(client, timeout_s=0.6, max_depth=8)
        try:
            with pytest.raises(ApiError) as refused:
                await queue.run(job)
            return refused.value, bool(await client.exists(cancel_key(job.job_id)))
        finally:
            await client.aclose()

    error, cancelled = asyncio.run(run())
    assert (error.status, error.code) == (504, "job_timeout")
    assert cancelled  # a worker skips it, or stops it at its next slice
    assert job.deadline is not None and job.deadline - job.enqueued_at < 5  # the wait's own deadline, set on submit


def test_a_cancelled_caller_cancels_its_job_for_the_worker(url: str) -> None:
    """The OpenAI routes run n generations together and cancel the others when one fails: each cancelled wait
    marks its own job cancelled, so no worker keeps generating for an answer no one reads."""
    jobs = [
        LensJob(job_id=f"sibling-{i}", tenant="alpha", model="m", fingerprint="f", token_ids=[1, 2], layers=[0])
        for i in range(2)
    ]

    async def run() -> list[bool]:
        client = redis.asyncio.Redis.from_url(url)
        queue = JobQueue(client, timeout_s=60, max_depth=8)
        try:
            tasks = [asyncio.ensure_future(queue.run(job)) for job in jobs]
            await asyncio.sleep(0.3)  # submitted, waiting on a worker that never comes
            tasks[0].cancel()
            with pytest.raises(asyncio.CancelledError):
                await tasks[0]
            marked = [bool(await client.exists(cancel_key(job.job_id))) for job in jobs]
            tasks[1].cancel()
            await asyncio.gather(tasks[1], return_exceptions=True)
            return [*marked, bool(await client.exists(cancel_key(jobs[1].job_id)))]
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [True, False, True]  # only the cancelled one, until the other is cancelled too
