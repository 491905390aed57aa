"""An idle worker that reads fewer jobs than it took last time waits for the rest of them while they keep arriving
(Worker._gather), and never waits when its last read took one job. A real Redis server; stream entries stand in for
jobs (the gather reads entries, it does not run them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from app.launcher.embedded import EmbeddedRedis
from workers.contract.keys import CONSUMER_GROUP
from workers.runner import Worker, WorkerSettings

STREAM = "test:gather:jobs"
LANE = {STREAM: ">"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("gather") / "redis")
    try:
        yield embedded.start()
    finally:
        embedded.stop()


@pytest.fixture
def client(server: str) -> redis.Redis:
    client = redis.Redis.from_url(server)
    client.delete(STREAM)
    client.xgroup_create(STREAM, CONSUMER_GROUP, id="0", mkstream=True)
    return client


def _worker(client: redis.Redis, gather_ms: float, last_intake: int) -> Worker:
    """A worker's reading part only: no models loaded."""
    worker = Worker.__new__(Worker)
    worker.settings = WorkerSettings(worker_gather_ms=gather_ms)
    worker.redis = client
    worker.id = "gather-test"
    worker.last_intake = last_intake
    return worker


def _add_later(client: redis.Redis, delays_s: list[float]) -> threading.Thread:
    def add() -> None:
        for delay in delays_s:
            time.sleep(delay)
            client.xadd(STREAM, {"n": "1"})

    thread = threading.Thread(target=add)
    thread.start()
    return thread


def test_an_idle_worker_gathers_the_callers_of_its_last_batch(client: redis.Redis) -> None:
    worker = _worker(client, gather_ms=1000, last_intake=4)
    client.xadd(STREAM, {"n": "1"})
    late = _add_later(client, [0.05, 0.05, 0.05, 0.05])  # four more, each well within the gap after the one before
    first = worker._read(LANE, 16, 1000)
    gathered = worker._gather(LANE, len(first), 16)
    late.join()
    assert (len(first), len(gathered)) == (1, 4)  # all that kept coming, not only the last intake's number
    assert worker._read(LANE, 16, None) == []


def test_the_gather_stops_when_arrivals_stop(client: redis.Redis) -> None:
    worker = _worker(client, gather_ms=200, last_intake=8)
    for _ in range(2):
        client.xadd(STREAM, {"n": "1"})
    first = worker._read(LANE, 16, 1000)
    late = _add_later(client, [0.05, 1.5])  # one within the gap, one long after it
    gathered = worker._gather(LANE, len(first), 16)
    late.join()
    assert (len(first), len(gathered)) == (2, 1)


def test_no_gather_after_a_single_job_or_when_turned_off(client: redis.Redis) -> None:
    for last_intake, gather_ms in ((1, 1000), (4, 0)):
        worker = _worker(client, gather_ms=gather_ms, last_intake=last_intake)
        client.xadd(STREAM, {"n": "1"})
        late = _add_later(client, [0.05])
        first = worker._read(LANE, 16, 1000)
        assert (len(first), len(worker._gather(LANE, len(first), 16))) == (1, 0)
        late.join()
        assert len(worker._read(LANE, 16, None)) == 1
