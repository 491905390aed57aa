"""Records that Redis evicts or expires: a text is scored again, an id is reported as gone, a record missing a
part is never half-read."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from bench.texts import PASSAGE
from tests.conftest import MODEL
from workers.contract.keys import record_key


def test_an_evicted_record_is_scored_again_for_a_text_and_gone_for_an_id(
    alpha: httpx.Client, redis_client: redis.Redis
) -> None:
    text = f"The orchard keeps three kinds of apple and one stubborn pear tree ({uuid.uuid4().hex[:8]})."
    first = alpha.post("/v1/analysis/uncertainty", json={"model": MODEL, "text": text}).json()
    assert first["cached"] is False
    assert redis_client.delete(record_key("alpha", first["record_id"])) == 1  # what eviction or expiry does

    gone = alpha.post("/v1/analysis/uncertainty", json={"record_id": first["record_id"]})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "record_not_found"

    again = alpha.post("/v1/analysis/uncertainty", json={"model": MODEL, "text": text}).json()
    assert again["cached"] is False and again["record_id"] == first["record_id"]
    assert again["sequence"] == pytest.approx(first["sequence"], rel=1e-6)
    assert alpha.post("/v1/analysis/uncertainty", json={"record_id": first["record_id"]}).json()["cached"] is True


def test_a_record_missing_its_statistics_is_never_half_read(alpha: httpx.Client, redis_client: redis.Redis) -> None:
    text = f"A lighthouse keeper wrote the weather down twice a day ({uuid.uuid4().hex[:8]})."
    scored = alpha.post("/v1/score", json={"model": MODEL, "text": text}).json()
    key = record_key("alpha", scored["record_id"])
    assert redis_client.hdel(key, "stats") == 1

    by_id = alpha.post("/v1/analysis/uncertainty", json={"record_id": scored["record_id"]})
    assert by_id.status_code == 404 and by_id.json()["error"]["code"] == "record_not_found"
    rescored = alpha.post("/v1/score", json={"model": MODEL, "text": text}).json()
    assert rescored["record_id"] == scored["record_id"] and rescored["cached"] is False
    assert [t["logprob"] for t in rescored["tokens"]] == pytest.approx([t["logprob"] for t in scored["tokens"]])
    assert redis_client.hexists(key, "stats")


HEAD_EXAMPLES = [
    {"text": "The committee met on Tuesday and adjourned without a vote on the budget.", "label": 0},
    {"text": "As an AI language model, I can certainly help you with that request today.", "label": 1},
    {"text": "Rain fell on the harbour all night; by morning the boats sat low and grey.", "label": 0},
    {"text": "Certainly! Here is a concise summary of the key points you asked about.", "label": 1},
    {"text": "My grandmother kept her buttons in a biscuit tin that smelled of cloves.", "label": 0},
    {"text": "I hope this helps! Let me know if you have any other questions at all.", "label": 1},
    {"text": "The ferry was late again, so we ate chips on the sea wall and waited.", "label": 0},
    {"text": "In conclusion, there are several important factors to consider here.", "label": 1},
    {"text": "The plumber arrived at noon with the wrong washer and a very good story.", "label": 0},
    {"text": "Great question! There are many ways to approach this, depending on your goals.", "label": 1},
]


def wait_for(client: httpx.Client, path: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 300  # a bound on a stuck service, not a speed check
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(path).json()
        if done(body):
            return body
        time.sleep(0.3)
    raise TimeoutError(path)


@pytest.fixture
def squeeze(redis_client: redis.Redis) -> Iterator[Callable[[], None]]:
    """Makes the session's Redis run as compose runs it (`volatile-lru`), with room for only a few more records;
    its settings are given back after the test."""
    before = {k: v for k, v in redis_client.config_get("maxmemory*").items() if k in ("maxmemory", "maxmemory-policy")}
    before["notify-keyspace-events"] = redis_client.config_get("notify-keyspace-events")["notify-keyspace-events"]

    def limit() -> None:
        redis_client.config_set("notify-keyspace-events", "Ee")  # each evicted key is published (EVICTED)
        redis_client.config_set("maxmemory-policy", "volatile-lru")
        redis_client.config_set("maxmemory", int(redis_client.info("memory")["used_memory"]) + 3 * 1024 * 1024)

    try:
        yield limit
    finally:
        redis_client.config_set("maxmemory", before["maxmemory"])
        redis_client.config_set("maxmemory-policy", before["maxmemory-policy"])
        redis_client.config_set("notify-keyspace-events", before["notify-keyspace-events"])


EVICTED = "__keyevent@0__:evicted"
# what carries a TTL: records and what is derived from them
RECORD_CACHES = ("lp:rec:", "lp:bytes:", "lp:cross:", "lp:samples:")


def test_another_tenants_flood_of_records_evicts_records_only(
    alpha: httpx.Client, beta: httpx.Client, redis_client: redis.Redis, squeeze: Callable[[], None]
) -> None:
    """Tenant alpha's head, calibration, table and batch outlive tenant beta's flood of records under
    volatile-lru: only records (what carries a TTL) are evicted."""
    salt = uuid.uuid4().hex[:8]
    body = {"model": MODEL, "name": f"kept-{salt}", "family": "detect", "kind": "los", "examples": HEAD_EXAMPLES}
    head = alpha.post("/v1/heads", json=body).json()
    head = wait_for(alpha, f"/v1/heads/{head['id']}", lambda h: h["status"] in ("succeeded", "failed"))
    assert head["status"] == "succeeded", head
    texts = [{"text": e["text"], "label": "machine" if e["label"] else "human"} for e in HEAD_EXAMPLES]
    body = {"model": MODEL, "texts": texts, "methods": ["log_likelihood"]}
    calibration = alpha.post("/v1/calibrations", json=body).json()
    table = alpha.put(f"/v1/frequency-tables/kept-{salt}", json={"model": MODEL, "texts": [t["text"] for t in texts]})
    assert table.status_code == 200, table.text
    batch = alpha.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": f"A batch line ({salt})."}]}).json()
    batch = wait_for(alpha, f"/v1/batches/{batch['id']}", lambda b: b["status"] == "completed")

    squeeze()
    evictions = redis_client.pubsub()
    evictions.subscribe(EVICTED)
    assert (evictions.get_message(timeout=60) or {}).get("type") == "subscribe"  # listening before the flood
    evicted = int(redis_client.info("stats")["evicted_keys"])
    for i in range(10):  # ~240 tokens each, ~2.5 KB per position: twice the room left
        flood = beta.post("/v1/score", json={"model": MODEL, "text": f"{salt} {i} " + PASSAGE * 3})
        assert flood.status_code == 200, flood.text
    assert int(redis_client.info("stats")["evicted_keys"]) > evicted + 3
    names = []
    while (message := evictions.get_message(timeout=1.0)) is not None:  # each eviction was published at once
        names.append(message["data"].decode())
    evictions.close()
    assert len(names) > 3 and all(name.startswith(RECORD_CACHES) for name in names), names
    # Nothing but records can be evicted at all: no other key of the service carries a TTL (leases, inflight and
    # cancel marks, job results, worker heartbeats did, #30 item 7).
    evictable = [k.decode() for k in redis_client.scan_iter(match="lp:*", count=1000) if redis_client.ttl(k) >= 0]
    assert [k for k in evictable if not k.startswith(RECORD_CACHES)] == []
    assert beta.get("/readyz").json()["workers"] == {MODEL: 1}  # the worker's heartbeat is there

    assert alpha.get(f"/v1/heads/{head['id']}").json()["status"] == "succeeded"
    used = alpha.post("/v1/analysis/detect", json={"model": MODEL, "text": "Hello.", "heads": [head["id"]]})
    assert used.status_code == 200, used.text
    got = alpha.get(f"/v1/calibrations/{calibration['calibration_id']}")
    assert got.status_code == 200 and got.json()["methods"] == calibration["methods"]
    kept = alpha.get(f"/v1/frequency-tables/kept-{salt}", params={"model": MODEL})
    assert kept.status_code == 200 and kept.json()["tokens"] == table.json()["tokens"]
    assert alpha.get(f"/v1/batches/{batch['id']}").json()["completed"] == 1
    results = alpha.get(f"/v1/batches/{batch['id']}/results")
    assert results.status_code == 200 and len(results.text.splitlines()) == 1
    assert head["id"] in {h["id"] for h in alpha.get("/v1/heads").json()["data"]}
