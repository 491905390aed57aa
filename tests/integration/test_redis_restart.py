"""Redis restarts under the service (no persistence: everything in it is lost): requests during the outage
get 503, jobs accepted before it still finish (the gateway re-submits them), and the service recovers alone."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR


@pytest.fixture(scope="module")
def service(tiny_models: dict[str, str]) -> Iterator[LocalService]:
    env = {
        "LOGPROBE_MODELS": json.dumps([{"name": "tiny", "source": "hf", "path": tiny_models["tiny-llama"]}]),
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_JOB_TIMEOUT_S": "90",
    }
    with LocalService(env=env, log_dir=ARTIFACTS / "restart") as service:
        yield service


def test_accepted_jobs_survive_a_redis_restart(service: LocalService) -> None:
    worker = service.workers[0]
    os.kill(worker.pid, signal.SIGSTOP)
    time.sleep(1.5)  # the worker's blocking read times out: new entries wait in the stream
    with httpx.Client(base_url=service.base_url, timeout=120) as client, ThreadPoolExecutor(4) as pool:
        try:
            accepted = [
                pool.submit(client.post, "/v1/score", json={"model": "tiny", "text": f"Accepted job {i}."})
                for i in range(4)
            ]
            time.sleep(1.0)  # the gateway has queued them
            service.redis.stop()
            during = client.post("/v1/score", json={"model": "tiny", "text": "During the outage."})
            assert during.status_code == 503 and during.json()["error"]["code"] == "redis_unavailable"
            assert during.headers["Retry-After"]
            assert client.get("/readyz").status_code == 503
            service.redis.start()
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        responses = [f.result() for f in accepted]
        assert [r.status_code for r in responses] == [200] * 4
        assert len({r.json()["record_id"] for r in responses}) == 4
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:  # the worker re-announces its model within a heartbeat
            status = client.post("/v1/score", json={"model": "tiny", "text": "After the restart."}).status_code
            if status == 200:
                break
            assert status == 503
            time.sleep(0.5)
        assert status == 200
        assert client.get("/readyz").status_code == 200
