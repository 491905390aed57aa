"""A tenant's bytes of heads, calibrations, frequency tables and batches (#30 item 6): one budget,
`max_object_bytes_per_tenant`, enforced when an object is written (429 `quota_exceeded`, `param` `object_bytes`),
released when it is deleted, and counted as the bytes Redis holds for it. A gateway of its own with a small quota."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, KEYS, MODEL
from tests.integration.test_eviction import HEAD_EXAMPLES
from workers.contract.keys import head_key
from workers.contract.usage import object_usage_key

QUOTA = 1_000_000  # bytes: two frequency tables of SmolLM2 (49,152 counts each) fit, not three
TEXTS = [
    "The tide came in over the flats.",
    "A heron stood in the reeds all morning.",
    "Rain again, said the ferryman.",
]


@pytest.fixture(scope="module")
def quota_service() -> Iterator[LocalService]:
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps({**KEYS, "key-gamma": "gamma"}),
        "LOGPROBE_WORKER_THREADS": "1",
        "LOGPROBE_MAX_OBJECT_BYTES_PER_TENANT": str(QUOTA),
    }
    with LocalService(env=env, log_dir=ARTIFACTS / "object_quota") as service:
        yield service


@pytest.fixture
def client(quota_service: LocalService) -> Iterator[Callable[[str], httpx.Client]]:
    opened: list[httpx.Client] = []

    def as_tenant(key: str) -> httpx.Client:
        opened.append(
            httpx.Client(base_url=quota_service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        )
        return opened[-1]

    yield as_tenant
    for c in opened:
        c.close()


@pytest.fixture
def store(quota_service: LocalService) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(quota_service.redis_url)
    yield connection
    connection.close()


def stored_bytes(r: redis.Redis, key: str) -> int:
    """What Redis holds for one object's values: a string's length, or the lengths of a hash's values."""
    if r.type(key) == b"string":
        return int(r.strlen(key))
    return sum(int(r.hstrlen(key, field)) for field in r.hkeys(key))


def counted(r: redis.Redis, tenant: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(object_usage_key(tenant)).items()}


def wait_for(c: httpx.Client, path: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 300  # a bound on a stuck service, not a speed check
    while time.monotonic() < deadline:
        body: dict[str, Any] = c.get(path).json()
        if done(body):
            return body
        time.sleep(0.3)
    raise TimeoutError(path)


def refused(response: httpx.Response) -> bool:
    error = response.json().get("error", {})
    return response.status_code == 429 and (error.get("code"), error.get("param")) == ("quota_exceeded", "object_bytes")


def test_tables_count_their_bytes_and_the_quota_holds_until_one_is_deleted(
    client: Callable[[str], httpx.Client], store: redis.Redis
) -> None:
    alpha, salt = client("key-alpha"), uuid.uuid4().hex[:6]
    names = [f"t{i}-{salt}" for i in range(3)]
    for name in names[:2]:
        made = alpha.put(f"/v1/frequency-tables/{name}", json={"model": MODEL, "texts": TEXTS})
        assert made.status_code == 200, made.text
    usage = counted(store, "alpha")
    tables = {k: n for k, n in usage.items() if k.startswith("lp:freq:")}
    assert len(tables) == 2 and all(n == stored_bytes(store, k) for k, n in tables.items()), tables
    assert sum(tables.values()) > QUOTA // 2  # so a third cannot fit

    third = alpha.put(f"/v1/frequency-tables/{names[2]}", json={"model": MODEL, "texts": TEXTS})
    assert refused(third), third.text
    again = alpha.put(f"/v1/frequency-tables/{names[0]}", json={"model": MODEL, "texts": TEXTS[:1]})
    assert again.status_code == 200, again.text  # replacing one takes no more room
    beta = client("key-beta").put(f"/v1/frequency-tables/{names[2]}", json={"model": MODEL, "texts": TEXTS})
    assert beta.status_code == 200, beta.text  # another tenant's budget is its own

    assert alpha.delete(f"/v1/frequency-tables/{names[0]}", params={"model": MODEL}).status_code == 204
    assert len([k for k in counted(store, "alpha") if k.startswith("lp:freq:")]) == 1  # released
    made = alpha.put(f"/v1/frequency-tables/{names[2]}", json={"model": MODEL, "texts": TEXTS})
    assert made.status_code == 200, made.text
    for name in names[1:]:
        assert alpha.delete(f"/v1/frequency-tables/{name}", params={"model": MODEL}).status_code == 204
    assert client("key-beta").delete(f"/v1/frequency-tables/{names[2]}", params={"model": MODEL}).status_code == 204
    assert counted(store, "alpha") == {} or all(not k.startswith("lp:freq:") for k in counted(store, "alpha"))


def test_heads_calibrations_and_batches_count_what_redis_holds_for_them(
    client: Callable[[str], httpx.Client], store: redis.Redis
) -> None:
    alpha, salt = client("key-alpha"), uuid.uuid4().hex[:6]
    body = {"model": MODEL, "name": f"q-{salt}", "family": "detect", "kind": "los", "examples": HEAD_EXAMPLES}
    head = alpha.post("/v1/heads", json=body).json()
    head = wait_for(alpha, f"/v1/heads/{head['id']}", lambda h: h["status"] in ("succeeded", "failed"))
    assert head["status"] == "succeeded", head
    texts = [{"text": e["text"], "label": "machine" if e["label"] else "human"} for e in HEAD_EXAMPLES]
    calibration = alpha.post("/v1/calibrations", json={"model": MODEL, "texts": texts, "methods": ["log_likelihood"]})
    assert calibration.status_code == 200, calibration.text
    inputs = [{"text": f"Batch line {i} ({salt}).", "custom_id": f"c{i}"} for i in range(3)]
    batch = alpha.post("/v1/batches", json={"model": MODEL, "inputs": inputs}).json()
    batch = wait_for(alpha, f"/v1/batches/{batch['id']}", lambda b: b["status"] == "completed")

    usage = counted(store, "alpha")
    key = head_key("alpha", head["id"])
    assert usage[key] == stored_bytes(store, key) > 0  # its state and weights (the request went with training)
    assert store.hexists(key, "weights") and not store.hexists(key, "request")
    (calibration_key,) = [k for k in usage if k.startswith("lp:calib:")]
    assert usage[calibration_key] == stored_bytes(store, calibration_key)
    (batch_key,) = [k for k in usage if k.startswith("lp:batch:")]
    lines = alpha.get(f"/v1/batches/{batch['id']}/results").text.splitlines()
    spec = store.hstrlen(batch_key, "spec")
    assert usage[batch_key] == spec + sum(len(line.encode()) for line in lines)  # its inputs went when it finished
    assert usage[batch_key] == spec + sum(len(v) for v in store.hvals(batch_key + ":results"))

    for path in (f"/v1/heads/{head['id']}", f"/v1/calibrations/{calibration.json()['calibration_id']}",
                 f"/v1/batches/{batch['id']}"):  # fmt: skip
        assert alpha.delete(path).status_code == 204
    assert not {key, calibration_key, batch_key} & set(counted(store, "alpha"))


def test_a_batch_whose_lines_pass_the_quota_keeps_quota_errors_for_them(
    client: Callable[[str], httpx.Client], store: redis.Redis
) -> None:
    """Inputs that fit, answers that do not: once the budget is spent the remaining inputs end as
    `quota_exceeded` lines, the batch completes, and its count still matches what it holds."""
    gamma, salt = client("key-gamma"), uuid.uuid4().hex[:6]
    text, analyses = "word " * 40, [{"family": "uncertainty"}]  # with per-token values: lines of a few KB
    one = gamma.post(
        "/v1/batches",
        json={"model": MODEL, "inputs": [{"text": f"{text} {salt}"}], "analyses": analyses, "include_tokens": True},
    )
    one = wait_for(gamma, f"/v1/batches/{one.json()['id']}", lambda b: b["status"] == "completed")
    line_bytes = len(gamma.get(f"/v1/batches/{one['id']}/results").content)
    assert gamma.delete(f"/v1/batches/{one['id']}").status_code == 204
    for i in range(2):
        filler = gamma.put(f"/v1/frequency-tables/fill{i}-{salt}", json={"model": MODEL, "texts": TEXTS})
        assert filler.status_code == 200, filler.text
    room = QUOTA - sum(counted(store, "gamma").values())
    inputs = [{"text": f"{text} {i} {salt}"} for i in range(room // line_bytes + 5)]  # their answers cannot all fit
    batch = gamma.post(
        "/v1/batches", json={"model": MODEL, "inputs": inputs, "analyses": analyses, "include_tokens": True}
    )
    assert batch.status_code == 200, batch.text
    done = wait_for(gamma, f"/v1/batches/{batch.json()['id']}", lambda b: b["status"] == "completed")
    lines = [json.loads(line) for line in gamma.get(f"/v1/batches/{done['id']}/results").text.splitlines()]
    codes = [(line["error"] or {}).get("code") for line in lines]
    assert codes[0] is None and codes[-1] == "quota_exceeded", codes
    usage = counted(store, "gamma")
    assert sum(usage.values()) <= QUOTA + len(json.dumps(lines[-1])) * codes.count("quota_exceeded")
    (batch_key,) = [k for k in usage if k.startswith("lp:batch:")]
    assert usage[batch_key] == store.hstrlen(batch_key, "spec") + sum(
        len(v) for v in store.hvals(batch_key + ":results")
    )
    assert gamma.delete(f"/v1/batches/{done['id']}").status_code == 204
    for i in range(2):
        assert gamma.delete(f"/v1/frequency-tables/fill{i}-{salt}", params={"model": MODEL}).status_code == 204
