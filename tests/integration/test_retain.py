"""What a record keeps (issue #17): `retain: "full"` (hidden states or rows besides the statistics) or `"stats"`
(statistics and top-k only), per request and per model, through the real service with tiny random models.

Tenants alpha and beta score the same text, one record of each kind, so that the analyses of a stats record are
compared with those of an independent full record of the same tokens; rows are checked against transformers'
own float64 log-probabilities."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from safetensors.numpy import load as st_load

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, hf_logprobs, service_env
from tests.integration.test_batches import wait_finished
from tests.integration.test_heads import wait_head
from workers.contract.keys import record_key

TEXT = "The lighthouse keeper wrote down every ship that passed, and the weather on each day."
TOL = 1e-4  # float32 rows against the float64 reference
SINGLE_FAMILIES = ("uncertainty", "membership", "detect")


@pytest.fixture(scope="module")
def retain_service(tiny_models: dict[str, str]) -> Iterator[LocalService]:
    """tiny-llama keeps full records by default; tiny-gemma2 (the reference model of two-model analyses) and
    tiny-falcon-h1 (whose logits are not W·h: it keeps rows) statistics only. One worker hosts all three."""
    models = [
        {"name": "tiny-llama", "source": "hf", "path": tiny_models["tiny-llama"]},
        {"name": "tiny-gemma2", "source": "hf", "path": tiny_models["tiny-gemma2"], "retain": "stats"},
        {"name": "tiny-falcon-h1", "source": "hf", "path": tiny_models["tiny-falcon-h1"], "retain": "stats"},
    ]
    with LocalService(env=service_env(models), log_dir=ARTIFACTS / "retain") as service:
        yield service


def _client(service: LocalService, key: str) -> httpx.Client:
    return httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=300)


@pytest.fixture
def alpha(retain_service: LocalService) -> Iterator[httpx.Client]:
    with _client(retain_service, "key-alpha") as client:
        yield client


@pytest.fixture
def beta(retain_service: LocalService) -> Iterator[httpx.Client]:
    with _client(retain_service, "key-beta") as client:
        yield client


@pytest.fixture
def store(retain_service: LocalService) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(retain_service.redis_url)
    yield client
    client.close()


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json() if response.headers["content-type"].startswith("application/json") else response.content


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def score(client: httpx.Client, model: str, text: str, retain: str | None = None, **more: Any) -> dict[str, Any]:
    body = {"model": model, "text": text, **more, **({} if retain is None else {"retain": retain})}
    return ok(client.post("/v1/score", json=body))  # type: ignore[no-any-return]


def fields(store: redis.Redis, tenant: str, record_id: str) -> set[str]:
    return {f.decode() for f in store.hkeys(record_key(tenant, record_id))}


def rows(client: httpx.Client, record_id: str, **query: Any) -> np.ndarray:
    return st_load(ok(client.get(f"/v1/records/{record_id}/logprobs", params=query)))["logprobs"]


def test_models_say_their_default(alpha: httpx.Client) -> None:
    retain = {m["id"]: m["retain"] for m in ok(alpha.get("/v1/models"))["data"]}
    assert retain == {"tiny-llama": "full", "tiny-gemma2": "stats", "tiny-falcon-h1": "stats"}


def test_stats_record_keeps_no_rows_and_answers_as_a_full_one(
    alpha: httpx.Client, beta: httpx.Client, store: redis.Redis, tiny_models: dict[str, str]
) -> None:
    kept = score(alpha, "tiny-llama", TEXT, "stats")
    full = score(beta, "tiny-llama", TEXT, "full")
    assert fields(store, "alpha", kept["record_id"]) == {"meta", "stats"}  # the worker never sent the states
    assert fields(store, "beta", full["record_id"]) == {"meta", "stats", "hidden"}
    assert ok(alpha.get(f"/v1/records/{kept['record_id']}"))["retain"] == "stats"
    assert ok(beta.get(f"/v1/records/{full['record_id']}"))["retain"] == "full"

    ids = [t["id"] for t in kept["tokens"]]
    reference = hf_logprobs(tiny_models["tiny-llama"], ids)[:-1]
    captured = np.array([t["logprob"] for t in kept["tokens"][1:]])
    np.testing.assert_allclose(captured, reference[np.arange(len(ids) - 1), ids[1:]], atol=TOL)
    assert [t["logprob"] for t in kept["tokens"]] == [t["logprob"] for t in full["tokens"]]

    for family in SINGLE_FAMILIES:
        a = ok(alpha.post(f"/v1/analysis/{family}", json={"record_id": kept["record_id"]}))
        b = ok(beta.post(f"/v1/analysis/{family}", json={"record_id": full["record_id"]}))
        assert a["methods"] and a["methods"] == b["methods"]
        assert a["sequence"] == b["sequence"], family
        assert [t["values"] for t in a["tokens"]] == [t["values"] for t in b["tokens"]], family
        assert a["undefined"] == b["undefined"]
    features = [ok(c.get(f"/v1/records/{r['record_id']}/features")) for c, r in ((alpha, kept), (beta, full))]
    assert features[0]["pawn"] == features[1]["pawn"] and features[0]["los"] == features[1]["los"]


def test_rows_of_a_stats_record_are_refused_with_their_code(alpha: httpx.Client) -> None:
    kept = score(alpha, "tiny-llama", TEXT + " Refused.", "stats")
    rid = kept["record_id"]
    refused(alpha.get(f"/v1/records/{rid}/logprobs"), 409, "rows_not_retained")
    refused(alpha.get(f"/v1/records/{rid}/hidden"), 409, "rows_not_retained")
    # two-model statistics need both records' full rows
    body = {"record_id": rid, "reference_model": "tiny-gemma2", "methods": ["kl"]}
    refused(alpha.post("/v1/analysis/compare", json=body), 409, "rows_not_retained")
    # what needs statistics only still works on it
    ok(alpha.post("/v1/analysis/compare", json={**body, "methods": ["confidence_gain"]}))
    assert ok(alpha.get(f"/v1/records/{rid}"))["retain"] == "stats"


def test_upgrade_by_export_keeps_the_statistics_and_adds_the_rows(
    alpha: httpx.Client, store: redis.Redis, tiny_models: dict[str, str]
) -> None:
    kept = score(alpha, "tiny-llama", TEXT + " Upgraded on export.", "stats")
    rid = kept["record_id"]
    key = record_key("alpha", rid)
    stats_before, meta_before = store.hget(key, "stats"), json.loads(store.hget(key, "meta") or b"{}")
    got = rows(alpha, rid, upgrade="true")
    ids = [t["id"] for t in kept["tokens"]]
    np.testing.assert_allclose(got, hf_logprobs(tiny_models["tiny-llama"], ids)[:-1], atol=TOL)
    assert fields(store, "alpha", rid) == {"meta", "stats", "hidden"}
    assert store.hget(key, "stats") == stats_before  # the statistics are the ones analyses already read
    meta_after = json.loads(store.hget(key, "meta") or b"{}")
    assert meta_after == {**meta_before, "retain": "full"}
    assert ok(alpha.get(f"/v1/records/{rid}"))["retain"] == "full"
    np.testing.assert_array_equal(rows(alpha, rid), got)  # no re-scoring asked for any more


def test_upgrade_by_scoring_in_full_and_no_downgrade(
    alpha: httpx.Client, store: redis.Redis, tiny_models: dict[str, str]
) -> None:
    text = TEXT + " Upgraded by scoring."
    kept = score(alpha, "tiny-llama", text, "stats")
    again = score(alpha, "tiny-llama", text, "stats")
    assert again["record_id"] == kept["record_id"] and again["cached"]
    upgraded = score(alpha, "tiny-llama", text, "full")
    assert upgraded["record_id"] == kept["record_id"] and not upgraded["cached"]  # re-scored
    assert [t["logprob"] for t in upgraded["tokens"]] == [t["logprob"] for t in kept["tokens"]]
    ids = [t["id"] for t in kept["tokens"]]
    np.testing.assert_allclose(
        rows(alpha, kept["record_id"]), hf_logprobs(tiny_models["tiny-llama"], ids)[:-1], atol=TOL
    )
    # a stats request never drops full rows: the record is served as it is
    after = score(alpha, "tiny-llama", text, "stats")
    assert after["cached"] and fields(store, "alpha", kept["record_id"]) == {"meta", "stats", "hidden"}


def test_two_model_analysis_upgrades_when_asked(alpha: httpx.Client) -> None:
    kept = score(alpha, "tiny-llama", TEXT + " Compared.", "stats")
    body = {"record_id": kept["record_id"], "reference_model": "tiny-gemma2", "methods": ["kl"]}
    refused(alpha.post("/v1/analysis/compare", json=body), 409, "rows_not_retained")
    answer = ok(alpha.post("/v1/analysis/compare", json={**body, "retain": "full"}))
    assert not answer["cached"] and all(t["values"]["kl"] is not None for t in answer["tokens"])
    assert ok(alpha.get(f"/v1/records/{kept['record_id']}"))["retain"] == "full"
    again = ok(alpha.post("/v1/analysis/compare", json=body))
    assert [t["values"] for t in again["tokens"]] == [t["values"] for t in answer["tokens"]]


def test_model_default_is_honoured_and_overridden(
    alpha: httpx.Client, store: redis.Redis, tiny_models: dict[str, str]
) -> None:
    """tiny-falcon-h1 keeps rows (not hidden states) when it keeps anything: its default, stats, stores neither."""
    kept = score(alpha, "tiny-falcon-h1", TEXT)
    assert ok(alpha.get(f"/v1/records/{kept['record_id']}"))["retain"] == "stats"
    assert fields(store, "alpha", kept["record_id"]) == {"meta", "stats"}
    refused(alpha.get(f"/v1/records/{kept['record_id']}/logprobs"), 409, "rows_not_retained")
    full = score(alpha, "tiny-falcon-h1", TEXT + " In full.", "full")
    assert fields(store, "alpha", full["record_id"]) == {"meta", "stats", "rows"}
    ids = [t["id"] for t in full["tokens"]]
    np.testing.assert_allclose(
        rows(alpha, full["record_id"]), hf_logprobs(tiny_models["tiny-falcon-h1"], ids)[:-1], atol=TOL
    )


def test_generations_and_batches_keep_what_they_are_told(alpha: httpx.Client, store: redis.Redis) -> None:
    body = {"model": "tiny-llama", "prompt": "Once", "max_tokens": 4, "temperature": 0.0, "retain": "stats"}
    generated = ok(alpha.post("/v1/generate", json=body))
    meta = ok(alpha.get(f"/v1/records/{generated['record_id']}"))
    assert meta["retain"] == "stats" and meta["kind"] == "generate"
    assert fields(store, "alpha", generated["record_id"]) == {"meta", "stats"}
    rows(alpha, generated["record_id"], upgrade="true")  # upgraded in place: still the generation's record
    meta = ok(alpha.get(f"/v1/records/{generated['record_id']}"))
    assert meta["retain"] == "full" and meta["kind"] == "generate" and meta["n_prompt"] is not None

    texts = [{"text": TEXT + f" Batch {i}."} for i in range(2)]
    batch = ok(alpha.post("/v1/batches", json={"model": "tiny-llama", "inputs": texts, "retain": "stats"}))
    assert wait_finished(alpha, batch["id"])["status"] == "completed"
    lines = [json.loads(line) for line in ok(alpha.get(f"/v1/batches/{batch['id']}/results")).decode().splitlines()]
    assert len(lines) == 2 and all(line["error"] is None for line in lines)
    for line in lines:
        assert ok(alpha.get(f"/v1/records/{line['record_id']}"))["retain"] == "stats"


def test_full_and_stats_requests_at_once_end_with_full_rows(alpha: httpx.Client, store: redis.Redis) -> None:
    """A full request may join a stats job in flight for the same record: it then scores again with its own."""
    text = TEXT + " Raced."
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda retain: score(alpha, "tiny-llama", text, retain), ["stats", "full"] * 2))
    assert len({a["record_id"] for a in answers}) == 1
    assert fields(store, "alpha", answers[0]["record_id"]) == {"meta", "stats", "hidden"}
    assert ok(alpha.get(f"/v1/records/{answers[0]['record_id']}"))["retain"] == "full"


def test_heads_that_read_hidden_states_need_full_records(alpha: httpx.Client, store: redis.Redis) -> None:
    """A probe head refuses stats records (409 rows_not_retained); trained from texts of a model whose default is
    stats, it scores them in full; a los head (statistics only) takes stats records."""
    labelled = [{"text": f"{TEXT} Example {i}, {'plain' if i % 2 else 'odd'}.", "label": i % 2} for i in range(12)]
    kept = [score(alpha, "tiny-gemma2", e["text"])["record_id"] for e in labelled]
    assert all(fields(store, "alpha", rid) == {"meta", "stats"} for rid in kept)
    given = [{"record_id": rid, "label": e["label"]} for rid, e in zip(kept, labelled, strict=True)]
    body = {"name": "probe_given", "kind": "probe", "model": "tiny-gemma2", "family": "detect", "seed": 1}
    refused(alpha.post("/v1/heads", json={**body, "examples": given}), 409, "rows_not_retained")
    for kind, examples in (("los", given), ("probe", labelled)):
        response = alpha.post("/v1/heads", json={**body, "name": f"{kind}_ok", "kind": kind, "examples": examples})
        assert response.status_code == 202, response.text
        assert wait_head(alpha, response.json()["id"])["status"] == "succeeded"
    assert all(fields(store, "alpha", rid) == {"meta", "stats", "hidden"} for rid in kept)  # the probe's texts
