"""A stream whose client leaves stops its job on the worker (issue #30 item 22, #29): a chat completion, a
contrastive decoding or a DoLa one cut after three events leaves the running batch between two steps, answered
`cancelled`, long before the tokens it asked for. Real sockets, the real gateway and worker, the packaged model."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlparse

import pytest
import redis

from tests.conftest import MODEL
from workers.contract.jobs import JobOutcome, decode_job
from workers.contract.keys import STEPPED_LANE, job_outcome_key, jobs_stream

pytestmark = pytest.mark.slow

NO_END = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|>: it writes until max_tokens


def cut_after_events(service: str, path: str, body: dict[str, Any], r: redis.Redis, events: int = 3) -> str:
    """Send a streamed request on a raw socket, read `events` events, find the job running it, then hang up; the
    job's id."""
    payload = json.dumps(body).encode()
    url = urlparse(service)
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-alpha\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while received.count(b"data: ") < events:
            chunk = sock.recv(65536)
            assert chunk, received.decode(errors="replace")
            received += chunk
        assert b" 200 " in received.split(b"\r\n", 1)[0], received[:300]
        entries: Any = r.xrange(jobs_stream(MODEL, STEPPED_LANE))
        jobs = [decode_job(fields) for _, fields in entries]
        mine = [job for job in jobs if job.tenant != "" and job.sampling.max_tokens == body["max_tokens"]]
        assert len(mine) == 1, jobs
        sock.shutdown(socket.SHUT_RDWR)
    return mine[0].job_id


def outcome_of(r: redis.Redis, job_id: str) -> JobOutcome:
    deadline = time.monotonic() + 120  # a bound, not a speed check: the job asked for minutes of tokens
    while time.monotonic() < deadline:
        raw = r.get(job_outcome_key(job_id))
        if raw is not None:
            return JobOutcome.model_validate_json(raw)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} has no outcome")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Tell me a long story."}], "logit_bias": NO_END},
        ),
        ("/v1/decode/contrastive", {"prompt": "Tell me a long story.", "preset": {"name": "prompt_contrast"}}),
        ("/v1/decode/contrastive", {"prompt": "Tell me a long story.", "preset": {"name": "dola", "layers": "low"}}),
    ],
    ids=["chat", "contrastive", "dola"],
)
def test_a_stream_cut_by_its_client_stops_its_job(
    service: str, redis_client: redis.Redis, path: str, body: dict[str, Any]
) -> None:
    body = {**body, "model": MODEL, "stream": True, "max_tokens": 1000, "temperature": 1.0, "seed": 5}
    if path == "/v1/decode/contrastive":
        body["preset"] = {**body["preset"], "model": MODEL}
        del body["model"]
    job_id = cut_after_events(service, path, body, redis_client)
    outcome = outcome_of(redis_client, job_id)
    assert not outcome.ok and outcome.error is not None
    assert (outcome.error.code, outcome.error.status) == ("cancelled", 499)
    assert outcome.error.message == "the client went away; the job stopped"  # stopped running, not skipped
    assert redis_client.xlen(jobs_stream(MODEL, STEPPED_LANE)) == 0  # nothing of it waits or runs
