"""Batches end to end: texts scored by the worker, analysed, with progress, JSONL results, tenancy and resume."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from app.batches.runner import RETRY_CODES, retry_delay
from app.batches.store import batch_key, create_batch
from app.launcher.local_service import ROOT
from tests.conftest import MODEL
from workers.contract.keys import BULK_LANE, jobs_stream
from workers.contract.lifetimes import CLAIM_UNTIL, expiry_key

TEXTS = [
    "The committee met in Geneva to discuss the railway.",
    "Fishermen mended their nets by the sea wall.",
    "A narrow-gauge line was built, with three tunnels and a viaduct.",
    "The keeper climbed ninety-one steps every evening.",
]
ANALYSES = [
    {"family": "uncertainty", "methods": ["mean_entropy", "perplexity"]},
    {"family": "detect", "methods": ["log_likelihood", "log_rank"]},
]


def wait_finished(client: httpx.Client, batch_id: str, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(f"/v1/batches/{batch_id}").json()
        assert status["completed"] + status["failed"] <= status["total"]
        if status["status"] in ("completed", "cancelled"):
            return status  # type: ignore[no-any-return]
        time.sleep(0.3)
    raise TimeoutError(batch_id)


def lines(client: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/batches/{batch_id}/results")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_a_batch_runs_every_analysis_on_every_input(alpha: httpx.Client) -> None:
    salt = uuid.uuid4().hex[:8]
    inputs: list[dict[str, Any]] = [{"text": f"{t} ({salt})", "custom_id": f"t{i}"} for i, t in enumerate(TEXTS)]
    inputs.append({"messages": [{"role": "user", "content": f"Say hello ({salt})"}], "custom_id": "chat"})
    inputs.append({"text": "word " * 9000, "custom_id": "too-long"})  # fails alone, the batch goes on
    created = alpha.post("/v1/batches", json={"model": MODEL, "inputs": inputs, "analyses": ANALYSES})
    assert created.status_code == 200, created.text
    batch = created.json()
    assert batch["status"] in ("queued", "in_progress") and batch["total"] == 6
    assert batch["analyses"] == ["uncertainty", "detect"] and batch["finished_at"] is None

    done = wait_finished(alpha, batch["id"])
    assert (done["status"], done["completed"], done["failed"]) == ("completed", 5, 1)
    assert done["finished_at"] >= done["created_at"]
    results = lines(alpha, batch["id"])
    assert [r["index"] for r in results] == list(range(6))
    assert [r["custom_id"] for r in results] == [i["custom_id"] for i in inputs]
    assert results[-1]["error"]["code"] == "context_length_exceeded" and results[-1]["results"] is None
    for item, line in zip(inputs[:4], results[:4], strict=True):
        # the same numbers and the same record as the single-request endpoints
        direct = alpha.post(
            "/v1/analysis/uncertainty", json={"model": MODEL, "text": item["text"], "methods": ANALYSES[0]["methods"]}
        ).json()
        assert line["record_id"] == direct["record_id"]
        assert line["results"]["uncertainty"]["sequence"] == pytest.approx(direct["sequence"], rel=1e-9)
        assert "tokens" not in line["results"]["uncertainty"]
        assert set(line["results"]["detect"]["sequence"]) == {"log_likelihood", "log_rank"}
        assert line["error"] is None
    assert results[4]["results"]["uncertainty"]["n_positions"] > 5  # the chat was templated and scored


def test_results_wait_for_the_batch_and_scoring_only_batches_return_records(alpha: httpx.Client) -> None:
    salt = uuid.uuid4().hex[:8]
    inputs = [{"text": f"{t} {salt} {i}"} for i, t in enumerate(TEXTS * 2)]
    batch = alpha.post("/v1/batches", json={"model": MODEL, "inputs": inputs, "include_tokens": True}).json()
    early = alpha.get(f"/v1/batches/{batch['id']}/results")
    assert early.status_code == 409 and early.json()["error"]["code"] == "batch_not_finished"
    assert early.headers["Retry-After"]
    wait_finished(alpha, batch["id"])
    results = lines(alpha, batch["id"])
    assert len(results) == 8 and all(r["record_id"] and r["results"] == {} for r in results)
    record = alpha.get(f"/v1/records/{results[3]['record_id']}").json()
    assert "".join(t["text"] for t in record["tokens"]) == inputs[3]["text"]


def test_batches_belong_to_their_tenant(alpha: httpx.Client, beta: httpx.Client) -> None:
    batch = alpha.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": "hello there"}]}).json()
    for method, path in (
        ("GET", f"/v1/batches/{batch['id']}"),
        ("GET", f"/v1/batches/{batch['id']}/results"),
        ("POST", f"/v1/batches/{batch['id']}/cancel"),
        ("DELETE", f"/v1/batches/{batch['id']}"),
    ):
        response = beta.request(method, path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "batch_not_found"
    wait_finished(alpha, batch["id"])
    assert beta.get(f"/v1/batches/{batch['id']}/results").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no-such-model", "inputs": [{"text": "x"}]}, 404, "model_not_found"),
        (
            {"model": MODEL, "inputs": [{"text": "x"}], "analyses": [{"family": "uncertainty", "methods": ["nope"]}]},
            422,
            "unknown_method",
        ),
        (
            {
                "model": MODEL,
                "inputs": [{"text": "x"}],
                "analyses": [{"family": "uncertainty", "reference_model": MODEL}],
            },
            422,
            "invalid_request",
        ),
        (
            {"model": MODEL, "inputs": [{"text": "x", "messages": [{"role": "user", "content": "y"}]}]},
            422,
            "invalid_request",
        ),
        ({"model": MODEL, "inputs": []}, 422, "invalid_request"),
        ({"model": MODEL, "inputs": [{"text": "x"}] * 10_001}, 422, "batch_too_large"),
    ],
)
def test_bad_batches_are_refused_before_anything_runs(
    alpha: httpx.Client, body: dict[str, Any], status: int, code: str
) -> None:
    response = alpha.post("/v1/batches", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert alpha.get("/v1/batches/batch_" + "0" * 24).status_code == 404


def test_a_cancelled_batch_stops_counting_and_gives_every_input_a_line(alpha: httpx.Client) -> None:
    salt = uuid.uuid4().hex[:8]
    inputs = [{"text": f"{TEXTS[i % 4]} {salt} number {i}", "custom_id": f"n{i}"} for i in range(40)]
    batch = alpha.post("/v1/batches", json={"model": MODEL, "inputs": inputs}).json()
    cancelled = alpha.post(f"/v1/batches/{batch['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    at_cancel = cancelled.json()
    assert at_cancel["status"] == "cancelled" and at_cancel["finished_at"] is not None
    time.sleep(1.5)  # inputs in flight at the cancel finish now: their lines are not kept
    after = alpha.get(f"/v1/batches/{batch['id']}").json()
    for field in ("status", "completed", "failed", "cancelled"):
        assert after[field] == at_cancel[field]
    assert after["completed"] + after["failed"] + after["cancelled"] == 40 and after["cancelled"] > 0
    results = lines(alpha, batch["id"])
    assert [r["index"] for r in results] == list(range(40))
    assert [r["custom_id"] for r in results] == [f"n{i}" for i in range(40)]
    skipped = [r for r in results if r["error"] and r["error"]["code"] == "cancelled"]
    assert len(skipped) == after["cancelled"]
    assert all(r["record_id"] is None and r["results"] is None for r in skipped)
    assert sum(1 for r in results if r["error"] is None) == after["completed"]
    again = alpha.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "batch_finished"


def test_batches_are_listed_newest_first_and_deleted(
    alpha: httpx.Client, beta: httpx.Client, redis_client: redis.Redis
) -> None:
    salt = uuid.uuid4().hex[:8]
    first = alpha.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": f"First {salt}."}]}).json()
    wait_finished(alpha, first["id"])
    many = [{"text": f"{TEXTS[i % 4]} {salt} {i}"} for i in range(30)]
    second = alpha.post("/v1/batches", json={"model": MODEL, "inputs": many}).json()
    listed = alpha.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in listed["data"]] == [second["id"], first["id"]]
    assert listed["data"][1]["status"] == "completed" and listed["data"][1]["expires_at"] > first["created_at"]
    assert all(b["id"] not in (first["id"], second["id"]) for b in beta.get("/v1/batches").json()["data"])
    one = alpha.get("/v1/batches", params={"limit": 1}).json()
    assert [b["id"] for b in one["data"]] == [second["id"]] and one["has_more"] is True
    bad = alpha.get("/v1/batches", params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"

    assert beta.delete(f"/v1/batches/{second['id']}").status_code == 404
    assert alpha.delete(f"/v1/batches/{second['id']}").status_code == 204  # running: stopped and removed
    for path in (f"/v1/batches/{second['id']}", f"/v1/batches/{second['id']}/results"):
        assert alpha.get(path).json()["error"]["code"] == "batch_not_found"
    time.sleep(1.5)  # inputs that were in flight finish and find the batch gone: nothing comes back
    assert alpha.get(f"/v1/batches/{second['id']}").status_code == 404
    assert redis_client.exists(*(batch_key("alpha", second["id"], p) for p in ("", "inputs", "results", "failed"))) == 0
    assert alpha.delete(f"/v1/batches/{first['id']}").status_code == 204
    assert alpha.delete(f"/v1/batches/{first['id']}").status_code == 404
    ids = [b["id"] for b in alpha.get("/v1/batches", params={"limit": 100}).json()["data"]]
    assert first["id"] not in ids and second["id"] not in ids


def test_batches_retry_codes_the_service_really_raises() -> None:
    """Every code a batch retries is one some part of the service raises (the rate limits build theirs from the
    budget's name), and the rate limits are among them."""
    sources = "\n".join(p.read_text() for p in (ROOT / "app").rglob("*.py") if p.name != "runner.py")
    charged = set(re.findall(r'charge\([^)]*?"(\w+)"', sources))
    assert charged == {"requests", "tokens"}
    for code in RETRY_CODES:
        assert f'"{code}"' in sources or code.removesuffix("_rate_limited") in charged, code
    assert {"requests_rate_limited", "tokens_rate_limited", "job_timeout", "queue_full"} <= RETRY_CODES
    assert "rate_limited" not in RETRY_CODES
    # doubling from 1 s, never below the service's Retry-After, never above the cap
    assert [retry_delay(n, None, 30.0) for n in (1, 2, 3, 6, 7)] == [1.0, 2.0, 4.0, 30.0, 30.0]
    assert retry_delay(1, 5.0, 30.0) == 5.0 and retry_delay(1, 60.0, 30.0) == 30.0


async def test_a_batch_whose_gateway_died_is_resumed_without_redoing_inputs(
    alpha: httpx.Client, redis_url: str
) -> None:
    """A dead gateway leaves a lease that lapses and one finished line; the live gateway finishes the rest."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        salt = uuid.uuid4().hex[:8]
        spec = {"model": MODEL, "analyses": [], "include_tokens": False}
        inputs = [{"text": f"{t} {salt}"} for t in TEXTS]
        batch_id = await create_batch(client, "alpha", spec, inputs)
        name = f"alpha\x1f{batch_id}"
        lease = f"lp:{{jobs}}:lease:batch:{name}"  # app.platform.leases: a deadline, not a TTL
        await client.eval(CLAIM_UNTIL, 2, lease, expiry_key(lease), "a-dead-gateway", time.time() + 3, time.time())
        marker = {"index": 0, "custom_id": None, "record_id": "from-before", "results": {}, "error": None}
        await client.hset(batch_key("alpha", batch_id, "results"), "0", json.dumps(marker))
        await client.hset(batch_key("alpha", batch_id), "status", "in_progress")
        time.sleep(1.5)
        assert alpha.get(f"/v1/batches/{batch_id}").json()["completed"] == 1  # the lease still holds
        done = wait_finished(alpha, batch_id, timeout_s=120)
        assert (done["status"], done["completed"]) == ("completed", 4)
        results = lines(alpha, batch_id)
        assert results[0]["record_id"] == "from-before"  # not redone
        assert all(r["record_id"] and r["record_id"] != "from-before" for r in results[1:])
    finally:
        await client.aclose()


def test_a_batch_of_chats_takes_chat_only_methods(alpha: httpx.Client) -> None:
    """drift needs every input to be a chat: a batch of chats is checked as one, and runs it per input."""
    chat = [
        {"role": "user", "content": "Name a river."},
        {"role": "assistant", "content": "The Nile."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "The Amazon."},
    ]
    body = {
        "model": MODEL,
        "inputs": [{"messages": chat, "custom_id": "c"}],
        "analyses": [{"family": "compare", "methods": ["drift"], "reference_model": MODEL}],
    }
    created = alpha.post("/v1/batches", json=body)
    assert created.status_code == 200, created.text
    wait_finished(alpha, created.json()["id"])
    (line,) = lines(alpha, created.json()["id"])
    direct = alpha.post(
        "/v1/analysis/compare", json={"model": MODEL, "messages": chat, "methods": ["drift"], "reference_model": MODEL}
    ).json()
    assert line["error"] is None
    assert line["results"]["compare"]["sequence"] == direct["sequence"]
    refused = alpha.post("/v1/batches", json={**body, "inputs": [*body["inputs"], {"text": "plain"}]})
    assert refused.status_code == 422


def test_a_tenants_batches_do_not_queue_ahead_of_anothers_request(
    alpha: httpx.Client, beta: httpx.Client, redis_client: redis.Redis
) -> None:
    salt = uuid.uuid4().hex[:8]
    inputs = [[{"text": f"{salt} batch {b}, input {i}: " + TEXTS[i % 4] * 2} for i in range(16)] for b in range(5)]
    batches = [alpha.post("/v1/batches", json={"model": MODEL, "inputs": one}).json()["id"] for one in inputs]
    try:
        deadline = time.monotonic() + 60  # a bound on a stuck gateway, not a speed check
        while redis_client.xlen(jobs_stream(MODEL, BULK_LANE)) < 24 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert redis_client.xlen(jobs_stream(MODEL, BULK_LANE)) >= 24  # the batches' jobs wait in their lane
        answer = beta.post("/v1/score", json={"model": MODEL, "text": f"{salt}: one request from another tenant."})
        done = sum(alpha.get(f"/v1/batches/{b}").json()["completed"] for b in batches)
    finally:
        for b in batches:
            alpha.post(f"/v1/batches/{b}/cancel")
    assert answer.status_code == 200
    # In one queue it would have waited for the >= 24 jobs read before it and every job ahead of it (40 in
    # flight: 5 batches x 8); in its own lane it is taken at the next read.
    assert done < 40
