"""Processes that die, and what a head may hold. `logprobe serve` starts its worker and its Redis again after
kill -9, stops everything cleanly on SIGTERM as on Ctrl-C (a heavy job under way is left for another delivery, its
worker says so), and a second `serve` on the same port refuses without touching the first; a gateway whose model
has no live worker left answers 503 `model_unavailable` within seconds instead of waiting out the job timeout. A
head whose inputs exceed the training budget is refused up front; repeated examples are trained once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.launcher.local_service import ROOT, LocalService, free_port, wait_ready
from bench.texts import PASSAGE
from tests.conftest import ARTIFACTS, DATA_DIR, KEYS, MODEL


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def child_running(parent: int, needle: str) -> int | None:
    found = [pid for pid in children(parent) if needle in command_of(pid)]
    return found[0] if found else None


def wait_for(check: object, bound_s: float = 180) -> None:
    deadline = time.monotonic() + bound_s  # a bound against a broken run, not a speed check
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def post_ignoring_errors(url: str, body: dict[str, object]) -> None:
    """A request cut by the server's shutdown: whatever it ends with is not what the test checks."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, timeout=120)


def score(base: str, text: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/score", json={"model": MODEL, "text": text}, timeout=120)


def test_serve_restarts_what_dies_refuses_a_second_start_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LOGPROBE_REDIS_URL", "LOGPROBE_API_KEYS")}
    env.update({"LOGPROBE_DATA_DIR": str(DATA_DIR), "PYTHONPATH": str(ROOT)})
    env["LOGPROBE_EMBEDDED_REDIS_DIR"] = str(tmp_path / "redis")  # its append-only file too: never the real home
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "serve-supervised.log"
    base = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "app.launcher.cli", "serve", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cli, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_ready(base, [proc])
            assert score(base, "Before anything died.").status_code == 200

            second = subprocess.run(cli, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
            assert second.returncode == 1 and "in use" in second.stderr and "Traceback" not in second.stderr
            assert score(base, "The first serve is untouched.").status_code == 200  # its Redis still answers

            worker = child_running(proc.pid, "-m workers")
            assert worker is not None
            os.kill(worker, signal.SIGKILL)
            wait_for(lambda: (w := child_running(proc.pid, "-m workers")) is not None and w != worker)
            wait_ready(base, [proc])
            assert score(base, "After the worker died.").status_code == 200

            server = child_running(proc.pid, "redis-server")
            assert server is not None
            os.kill(server, signal.SIGKILL)
            wait_for(lambda: (r := child_running(proc.pid, "redis-server")) is not None and r != server)
            wait_for(lambda: score(base, "After Redis died.").status_code == 200)
            assert "embedded Redis started again" in log_path.read_text(errors="replace")

            # SIGTERM while a long attribution runs: the worker stops it at its next slice and leaves it pending
            body = {"model": MODEL, "text": PASSAGE * 3, "positions": [250], "method": "occlusion"}
            threading.Thread(target=post_ignoring_errors, args=(f"{base}/v1/analysis/attribution", body)).start()
            time.sleep(3)  # under way
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text(errors="replace")
    assert "attribution stopped after" in text and "the worker is stopping" in text
    assert "workers: worker" in text and " stopped" in text
    leftovers = subprocess.run(["pgrep", "-f", f"redis/{port}/redis"], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""


@pytest.fixture(scope="module")
def small_budget() -> Iterator[LocalService]:
    """A service of its own: a head training budget of 1 MiB and 20 s, and a worker this module kills last."""
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps(KEYS),
        "LOGPROBE_JOB_TIMEOUT_S": "120",
        "LOGPROBE_MAX_HEAD_TRAINING_BYTES": str(1 << 20),
        "LOGPROBE_MAX_HEAD_TRAINING_S": "20",
    }
    with LocalService(env=env, log_dir=ARTIFACTS / "small-budget") as service:
        yield service


def head_body(examples: list[dict[str, object]]) -> dict[str, object]:
    return {"model": MODEL, "name": "budgeted", "family": "detect", "kind": "pawn", "seed": 1, "examples": examples}


def test_a_head_over_the_training_budget_is_refused_before_anything_runs(small_budget: LocalService) -> None:
    with httpx.Client(base_url=small_budget.base_url, headers={"Authorization": "Bearer key-alpha"}) as client:
        examples = [{"text": f"Example {i}: " + PASSAGE, "label": i % 2} for i in range(12)]  # 12 x ~120 positions
        refused = client.post("/v1/heads", json=head_body(examples), timeout=60)
        error = refused.json()["error"]
        assert refused.status_code == 422 and error["code"] == "training_too_large", refused.text
        assert "the limit is 1 MiB" in error["message"] and "12 distinct examples" in error["message"]
        assert client.get("/v1/heads").json()["data"] == []  # nothing stored, no slot taken


def test_a_head_past_its_time_budget_stops_and_fails_saying_so(small_budget: LocalService) -> None:
    with httpx.Client(base_url=small_budget.base_url, headers={"Authorization": "Bearer key-alpha"}) as client:
        examples = [{"text": f"Timed example {i}.", "label": i % 2} for i in range(10)]
        slow = {"max_epochs": 1000, "patience": 1000, "width": 1024, "batch_size": 1}  # minutes, alone
        body = {**head_body(examples), "kind": "los", "name": "timed", "params": slow}
        created = client.post("/v1/heads", json=body, timeout=60)
        assert created.status_code == 202, created.text
        head_id = created.json()["id"]
        wait_for(lambda: client.get(f"/v1/heads/{head_id}").json()["status"] == "failed")
        error = client.get(f"/v1/heads/{head_id}").json()["error"]
        assert error["code"] == "deadline_exceeded" and "max_head_training_s" in error["message"]


def test_repeated_examples_are_trained_once(small_budget: LocalService) -> None:
    with httpx.Client(base_url=small_budget.base_url, headers={"Authorization": "Bearer key-alpha"}) as client:
        examples = [{"text": f"Short example {i}.", "label": i % 2} for i in range(10)]
        created = client.post("/v1/heads", json={**head_body(examples * 3), "kind": "los"}, timeout=60)
        assert created.status_code == 202, created.text
        assert created.json()["examples"] == {"0": 5, "1": 5}  # 30 given, 10 distinct


def test_a_head_whose_gateway_is_killed_while_it_prepares_is_resumed_by_the_next_one(
    small_budget: LocalService,
) -> None:
    salt = uuid.uuid4().hex[:8]
    examples = [{"text": f"{salt} text {i}: the keeper climbed the steps.", "label": i % 2} for i in range(120)]
    headers = {"Authorization": "Bearer key-alpha"}
    with httpx.Client(base_url=small_budget.base_url, headers=headers, timeout=60) as client:
        created = client.post("/v1/heads", json={**head_body(examples), "kind": "los", "name": f"resumed_{salt}"})
        assert created.status_code == 202, created.text
        head_id = created.json()["id"]
        assert client.get(f"/v1/heads/{head_id}").json()["status"] == "scoring"
    small_budget.kill_gateway()  # mid-way through scoring 120 texts
    small_budget.start_gateway()
    with httpx.Client(base_url=small_budget.base_url, headers=headers, timeout=60) as client:
        wait_for(lambda: client.get(f"/v1/heads/{head_id}").json()["status"] in ("succeeded", "failed"))
        head = client.get(f"/v1/heads/{head_id}").json()
    assert head["status"] == "succeeded", head  # its lease lapsed, and the new gateway resumed it
    assert "resuming the preparation of head" in (ARTIFACTS / "small-budget" / "gateway.log").read_text()


def test_a_request_for_a_model_whose_workers_died_is_answered_503_within_seconds(small_budget: LocalService) -> None:
    with httpx.Client(base_url=small_budget.base_url, headers={"Authorization": "Bearer key-alpha"}) as client:
        assert (
            client.post("/v1/score", json={"model": MODEL, "text": "A worker is here."}, timeout=120).status_code == 200
        )
        small_budget.workers[0].kill()
        small_budget.workers[0].wait()
        answer = client.post("/v1/score", json={"model": MODEL, "text": "No worker is left to read this."}, timeout=300)
        # not 504 job_timeout: the gateway saw that no worker is left, long before the job's timeout
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "model_unavailable"
        assert answer.headers["Retry-After"]
