"""A finished batch keeps no inputs: completed or cancelled, its input list goes (before, a cancelled batch's
inputs stayed for the record lifetime outside the batch quota), and its lines still name every input."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import redis

from app.batches.store import batch_key
from tests.conftest import MODEL


def finished(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300  # a bound on a stuck service, not a speed check
    while time.monotonic() < deadline:
        status: dict[str, Any] = client.get(f"/v1/batches/{batch_id}").json()
        if status["status"] in ("completed", "cancelled"):
            return status
        time.sleep(0.3)
    raise TimeoutError(batch_id)


def test_a_cancelled_batch_drops_its_inputs_and_its_lines_keep_their_custom_ids(
    alpha: httpx.Client, redis_client: redis.Redis
) -> None:
    salt = uuid.uuid4().hex[:8]
    inputs = [{"text": f"Line {i} of a batch cut short ({salt}).", "custom_id": f"c{i}"} for i in range(30)]
    batch = alpha.post("/v1/batches", json={"model": MODEL, "inputs": inputs}).json()
    assert redis_client.exists(batch_key("alpha", batch["id"], "inputs"))
    cancelled = alpha.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelled"] > 0
    assert not redis_client.exists(batch_key("alpha", batch["id"], "inputs"))

    lines = [json.loads(line) for line in alpha.get(f"/v1/batches/{batch['id']}/results").text.splitlines()]
    assert [line["custom_id"] for line in lines] == [f"c{i}" for i in range(30)]
    skipped = [line for line in lines if line["error"] and line["error"]["code"] == "cancelled"]
    assert len(skipped) == alpha.get(f"/v1/batches/{batch['id']}").json()["cancelled"]

    assert alpha.delete(f"/v1/batches/{batch['id']}").status_code == 204
    assert not any(redis_client.exists(batch_key("alpha", batch["id"], p)) for p in ("", "results", "ids"))


def test_a_completed_batch_drops_its_inputs(alpha: httpx.Client, redis_client: redis.Redis) -> None:
    salt = uuid.uuid4().hex[:8]
    inputs = [{"text": f"A short line {i} ({salt}).", "custom_id": f"k{i}"} for i in range(3)]
    batch = alpha.post("/v1/batches", json={"model": MODEL, "inputs": inputs}).json()
    assert finished(alpha, batch["id"])["status"] == "completed"
    assert not redis_client.exists(batch_key("alpha", batch["id"], "inputs"))
    lines = [json.loads(line) for line in alpha.get(f"/v1/batches/{batch['id']}/results").text.splitlines()]
    assert [line["custom_id"] for line in lines] == ["k0", "k1", "k2"] and all(not line["error"] for line in lines)
