"""Faults, load and hostile input, with real processes: a worker killed mid-batch, a poison job, hostile
stream entries, a full queue, rate limits, body limits and the export switch."""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from app.launcher.local_service import LocalService
from bench.texts import text_of_tokens
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL
from workers.contract.cards import ModelCard
from workers.contract.jobs import ScoreJob, encode_job
from workers.contract.keys import CONSUMER_GROUP, DEAD_LETTER_STREAM, card_key, job_outcome_key, jobs_stream

KEYS = {
    "key-alpha": "alpha",
    "key-gamma": "gamma",
    "key-delta": "delta",
    "key-omega": "omega",
    "key-epsilon": "epsilon",
}
DEPTH = 6


@pytest.fixture(scope="module")
def strict() -> Iterator[LocalService]:
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps(KEYS),
        "LOGPROBE_WORKER_THREADS": "1",
        "LOGPROBE_VISIBILITY_TIMEOUT_S": "4",
        "LOGPROBE_RECLAIM_EVERY_S": "1",
        "LOGPROBE_MAX_DELIVERIES": "3",
        "LOGPROBE_ALLOW_EXPORT": "false",
        "LOGPROBE_MAX_BODY_BYTES": "50000",
        "LOGPROBE_RATE_LIMIT_RPM": "60",
        "LOGPROBE_RATE_LIMIT_TPM": "3000",
        "LOGPROBE_MAX_QUEUE_DEPTH": str(DEPTH),
    }
    with LocalService(env=env, log_dir=ARTIFACTS / "strict", workers=2) as service:
        yield service


def client(service: LocalService, key: str = "key-alpha") -> httpx.Client:
    return httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def texts(n: int, tokens: int, tag: str) -> list[str]:
    return [text_of_tokens(tokens, lambda t: t.split(), salt=f"{tag} {i}.") for i in range(n)]


def pause(service: LocalService, sig: signal.Signals) -> None:
    """SIGSTOP or SIGCONT the live workers. After a stop, wait out their blocking reads (1 s), so that Redis
    hands new entries to no one instead of to a frozen worker."""
    for worker in service.workers:
        if worker.poll() is None:
            os.kill(worker.pid, sig)
    if sig == signal.SIGSTOP:
        time.sleep(1.5)


def test_a_killed_worker_loses_no_job(strict: LocalService) -> None:
    batch = texts(DEPTH, 250, "kill")
    with client(strict) as c, ThreadPoolExecutor(DEPTH) as pool:
        futures = [pool.submit(c.post, "/v1/score", json={"model": MODEL, "text": t}) for t in batch]
        time.sleep(0.5)
        victim = strict.workers[0]
        victim.send_signal(signal.SIGKILL)  # mid-batch: one job is running on it, and maybe more were read
        responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * DEPTH
        record_ids = {r.json()["record_id"] for r in responses}
        assert len(record_ids) == DEPTH  # every job answered once, each with its own record
        for rid in record_ids:
            assert c.get(f"/v1/records/{rid}").status_code == 200
    assert victim.wait(5) == -signal.SIGKILL
    strict.start_worker()  # back to two workers for the tests below


def test_a_long_job_on_a_live_worker_is_not_taken_over(strict: LocalService) -> None:
    """A job running longer than the visibility timeout (4 s here) stays with its worker, which keeps the
    entry fresh from its heartbeat: no other worker reclaims and repeats it."""
    logs = [ARTIFACTS / "strict" / f"worker{i}.log" for i in range(len(strict.workers))]

    def reclaims() -> int:
        return sum(path.read_text().count("reclaimed") for path in logs if path.exists())

    before = reclaims()
    (long_text,) = texts(1, 2000, "long")  # ~2,400 tokens: several seconds on one thread
    started = time.monotonic()
    with client(strict, "key-omega") as c:
        response = c.post("/v1/score", json={"model": MODEL, "text": long_text})
    assert response.status_code == 200, response.text
    assert time.monotonic() - started > 4 + 1  # longer than the visibility timeout and a reclaim round
    assert reclaims() == before


def test_a_poison_job_is_dead_lettered_and_its_client_gets_an_error(strict: LocalService) -> None:
    r = redis.Redis.from_url(strict.redis_url)
    stream = jobs_stream(MODEL)
    pause(strict, signal.SIGSTOP)
    try:
        with client(strict) as c, ThreadPoolExecutor(1) as pool:
            future = pool.submit(c.post, "/v1/score", json={"model": MODEL, "text": "A job that never finishes."})
            deadline = time.monotonic() + 60  # a bound, not a speed check
            entries: Any = []
            while not entries and time.monotonic() < deadline:  # a ghost consumer takes it, as a crashing one would
                entries = r.xreadgroup(CONSUMER_GROUP, "ghost", {stream: ">"}, count=1, block=200)
            entry_id = entries[0][1][0][0]
            r.xclaim(stream, CONSUMER_GROUP, "ghost", 0, [entry_id], retrycount=3)
            pause(strict, signal.SIGCONT)
            response = future.result()
        assert response.status_code == 424 and response.json()["error"]["code"] == "job_failed"
        dead = r.xrange(DEAD_LETTER_STREAM)
        assert any(fields[b"entry"] == entry_id and b"3 times" in fields[b"reason"] for _, fields in dead)
        assert r.xpending(stream, CONSUMER_GROUP)["pending"] == 0
    finally:
        pause(strict, signal.SIGCONT)


def test_hostile_stream_entries_are_rejected_and_workers_live_on(strict: LocalService) -> None:
    r = redis.Redis.from_url(strict.redis_url)
    stream = jobs_stream(MODEL)
    card = ModelCard.model_validate_json(r.get(card_key(MODEL)) or b"")
    hostile = [
        {"job": pickle.dumps({"kind": "score", "token_ids": [1, 2]})},
        {"job": b'{"kind": "score", "job_id": "x"'},
        {"job": b"{}", "extra": b"1"},
        encode_job(
            ScoreJob(
                job_id="neg",
                tenant="alpha",
                model=MODEL,
                fingerprint=card.fingerprint,
                record_id="0" * 32,
                token_ids=[-5, 10**9],
            )
        ),
    ]
    before = r.xlen(DEAD_LETTER_STREAM)
    for fields in hostile:
        r.xadd(stream, fields)  # type: ignore[arg-type]
    deadline = time.monotonic() + 120  # a bound for a stuck worker, not a speed check: a loaded machine is slow
    outcome_key = job_outcome_key("neg")
    while (r.xlen(DEAD_LETTER_STREAM) < before + 3 or not r.exists(outcome_key)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.xlen(DEAD_LETTER_STREAM) == before + 3  # three malformed entries; the out-of-range ids fail cleanly
    outcome = json.loads(r.get(outcome_key) or b"{}")
    assert outcome["ok"] is False and outcome["error"]["code"] == "invalid_token_ids"
    assert all(w.poll() is None for w in strict.workers[-2:])
    with client(strict) as c:
        assert c.post("/v1/score", json={"model": MODEL, "text": "Still serving."}).status_code == 200


def test_a_full_queue_pushes_back(strict: LocalService) -> None:
    pause(strict, signal.SIGSTOP)
    try:
        with client(strict) as c, ThreadPoolExecutor(DEPTH + 3) as pool:
            futures = [
                pool.submit(c.post, "/v1/score", json={"model": MODEL, "text": t})
                for t in texts(DEPTH + 3, 20, "queue")
            ]
            time.sleep(2)
            pause(strict, signal.SIGCONT)
            responses = [f.result() for f in futures]
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(429) >= 3 and set(statuses) <= {200, 429}
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.json()["error"]["code"] == "queue_full" and refused.headers["Retry-After"] == "2"
    finally:
        pause(strict, signal.SIGCONT)


def fresh_window(needed_s: float) -> None:
    """The limits count per calendar minute: start where `needed_s` seconds fit before the next one."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.5)


def test_rate_limits_per_key(strict: LocalService) -> None:
    fresh_window(25)
    with client(strict, "key-gamma") as c:
        codes = [c.get("/v1/models").status_code for _ in range(61)]
        assert codes[:60] == [200] * 60 and codes[60] == 429
        limited = c.get("/v1/models")
        assert limited.json()["error"]["code"] == "requests_rate_limited" and int(limited.headers["Retry-After"]) > 0
    with client(strict, "key-delta") as c:
        first, second = texts(2, 1600, "tokens")
        assert c.post("/v1/score", json={"model": MODEL, "text": first}).status_code == 200
        over = c.post("/v1/score", json={"model": MODEL, "text": second})
        assert over.status_code == 429 and over.json()["error"]["code"] == "tokens_rate_limited"
    with client(strict) as c:  # another key's budget is untouched
        assert c.get("/v1/models").status_code == 200


def test_attribution_passes_count_against_the_token_budget(strict: LocalService) -> None:
    fresh_window(40)
    with client(strict, "key-epsilon") as c:
        text = texts(1, 40, "attribution")[0]
        scored = c.post("/v1/score", json={"model": MODEL, "text": text})
        assert scored.status_code == 200
        target = scored.json()["n_tokens"] - 1  # occlusion: target + 1 passes over target + 1 tokens
        body = {"record_id": scored.json()["record_id"], "positions": [target], "method": "occlusion"}
        first = c.post("/v1/analysis/attribution", json=body)
        assert first.status_code == 200 and first.json()["passes"] == target + 1
        assert (target + 1) ** 2 + scored.json()["n_tokens"] <= 3000 < 2 * (target + 1) ** 2
        over = c.post("/v1/analysis/attribution", json=body)
        assert over.status_code == 429 and over.json()["error"]["code"] == "tokens_rate_limited"


def test_body_limits_export_switch_and_auth(strict: LocalService) -> None:
    with client(strict) as c:
        big = c.post("/v1/score", json={"model": MODEL, "text": "x" * 60000})
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
        chunked = c.post(
            "/v1/score",
            content=iter([b'{"model": "m", "text": "', b"y" * 60000, b'"}']),
            headers={"content-type": "application/json"},
        )
        assert chunked.status_code == 413
        rid = c.post("/v1/score", json={"model": MODEL, "text": "Export is off here."}).json()["record_id"]
        export = c.get(f"/v1/records/{rid}/logprobs")
        assert export.status_code == 403 and export.json()["error"]["code"] == "export_disabled"
        assert c.post("/v1/analysis/uncertainty", json={"record_id": rid}).status_code == 200
    for path in ("/v1/models", "/v1/analysis/methods", f"/v1/records/{rid}"):
        assert httpx.get(f"{strict.base_url}{path}").status_code == 401
    for path in ("/healthz", "/readyz"):
        assert httpx.get(f"{strict.base_url}{path}").status_code == 200
