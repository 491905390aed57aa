"""Records that Redis evicts or expires: a text is scored again, an id is reported as gone, a record missing a
part is never half-read."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis

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
