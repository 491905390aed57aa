"""A client that hangs up cancels its job when no worker has started it yet (real sockets, real worker)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from urllib.parse import urlparse

import httpx

from bench.texts import PASSAGE
from tests.conftest import METRICS_AUTH, MODEL


def cancelled_total(service: str) -> float:
    for line in httpx.get(f"{service}/metrics", headers=METRICS_AUTH).text.splitlines():
        if line.startswith("logprobe_jobs_cancelled_total "):
            return float(line.split()[1])
    return 0.0


def test_a_client_that_hangs_up_cancels_its_unstarted_job(service: str, alpha: httpx.Client) -> None:
    salt = uuid.uuid4().hex
    long_text = f"{salt} " + PASSAGE * 30  # ~3,000 tokens: keeps the only worker busy for seconds
    busy = threading.Thread(target=lambda: alpha.post("/v1/score", json={"model": MODEL, "text": long_text}))
    busy.start()
    time.sleep(0.5)
    before = cancelled_total(service)
    left = {"model": MODEL, "text": f"Nobody waits for this text any more ({salt})."}
    body = json.dumps(left).encode()
    url = urlparse(service)
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-alpha\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        time.sleep(1.0)  # the job is queued behind the long one
    busy.join()
    deadline = time.monotonic() + 60  # a bound, not a speed check
    while cancelled_total(service) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cancelled_total(service) == before + 1
    time.sleep(1.0)  # the worker has skipped the cancelled job by now
    again = alpha.post("/v1/score", json=left)
    assert again.status_code == 200 and again.json()["cached"] is False  # it never ran


def test_a_request_that_joined_a_cancelled_job_still_gets_its_answer(service: str, alpha: httpx.Client) -> None:
    """Two identical requests share one job; the first hangs up, the second is answered by a job of its own."""
    salt = uuid.uuid4().hex
    long_text = f"{salt} " + PASSAGE * 30
    busy = threading.Thread(target=lambda: alpha.post("/v1/score", json={"model": MODEL, "text": long_text}))
    busy.start()
    time.sleep(0.5)
    shared = {"model": MODEL, "text": f"Two clients ask for this one ({salt})."}
    body = json.dumps(shared).encode()
    url = urlparse(service)
    answers: list[httpx.Response] = []
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-alpha\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        time.sleep(0.5)
        second = threading.Thread(target=lambda: answers.append(alpha.post("/v1/score", json=shared)))
        second.start()
        time.sleep(0.5)  # the second request has joined the first one's job
    second.join()
    busy.join()
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["n_tokens"] > 5
