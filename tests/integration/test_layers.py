"""Layers on request (issue #32): /v1/score with `layers` keeps those hidden states from the same forward, and
GET /v1/records/{id}/hidden?layer=L exports them. Every exported layer equals transformers' own
`output_hidden_states` of the packaged SmolLM2 (hidden_states[L], 0 = the embeddings); the final layer is the
record's own final-state export, byte for byte. The session's gateway, worker and Redis."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import torch
from safetensors.numpy import load as st_load

from tests.conftest import MODEL
from workers.contract.usage import DAY_S, usage_key

pytestmark = pytest.mark.slow

TEXT = "The lighthouse keeper counted the ships that passed the harbour every night"


def exported(client: httpx.Client, record_id: str, **params: Any) -> np.ndarray:
    response = client.get(f"/v1/records/{record_id}/hidden", params=params)
    assert response.status_code == 200, response.text
    return np.asarray(st_load(io.BytesIO(response.content).read())["hidden"])


def reference_states(model: Any, ids: list[int]) -> list[np.ndarray]:
    """transformers' hidden_states [T, d] per layer, float32, independently of the service."""
    with torch.inference_mode():
        states = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    return [h[0].numpy() for h in states]


@pytest.fixture(scope="module")
def scored(service: str) -> dict[str, Any]:
    with httpx.Client(base_url=service, headers={"Authorization": "Bearer key-alpha"}, timeout=300) as alpha:
        text = f"{TEXT} ({uuid.uuid4().hex[:6]})"
        response = alpha.post("/v1/score", json={"model": MODEL, "text": text, "layers": "all"})
        assert response.status_code == 200, response.text
        return {"text": text, **response.json()}


def test_every_kept_layer_equals_transformers_hidden_states(
    scored: dict[str, Any], alpha: httpx.Client, hf_smollm2: tuple[Any, Any]
) -> None:
    model, _ = hf_smollm2
    n = model.config.num_hidden_layers
    ids = [t["id"] for t in scored["tokens"]]
    assert scored["layers"] == list(range(n + 1))
    record = alpha.get(f"/v1/records/{scored['record_id']}").json()
    assert record["layers"] == list(range(n + 1)) and record["retain"] == "full"
    states = reference_states(model, ids)
    for layer in range(n + 1):
        got = exported(alpha, scored["record_id"], layer=layer)
        assert got.dtype == np.float32 and got.shape == (len(ids) - 1, model.config.hidden_size)
        np.testing.assert_allclose(got, states[layer][:-1], atol=1e-5, rtol=0)
    # a page of a middle layer is that page of the layer
    page = exported(alpha, scored["record_id"], layer=n // 2, start=3, stop=6)
    np.testing.assert_allclose(page, states[n // 2][2:5], atol=1e-5, rtol=0)
    assert np.abs(states[n // 2] - states[n]).max() > 1.0  # the layers differ: the check could fail


def test_the_final_layer_is_the_final_state_export(scored: dict[str, Any], alpha: httpx.Client) -> None:
    n = scored["layers"][-1]
    final = alpha.get(f"/v1/records/{scored['record_id']}/hidden", params={"layer": n})
    plain = alpha.get(f"/v1/records/{scored['record_id']}/hidden")
    assert final.status_code == plain.status_code == 200
    assert final.content == plain.content and final.headers["X-Logprobe-Layer"] == str(n)


def test_a_record_with_layers_is_scored_like_one_without(scored: dict[str, Any], alpha: httpx.Client) -> None:
    plain = alpha.post("/v1/score", json={"model": MODEL, "text": scored["text"]}).json()
    assert plain["record_id"] != scored["record_id"] and plain["layers"] == []
    for with_layers, without in zip(scored["tokens"][1:], plain["tokens"][1:], strict=True):
        assert with_layers["logprob"] == pytest.approx(without["logprob"], abs=1e-5)
    again = alpha.post("/v1/score", json={"model": MODEL, "text": scored["text"], "layers": "all"}).json()
    assert again["record_id"] == scored["record_id"] and again["cached"] is True


def test_a_layer_not_kept_is_409_and_bad_layers_are_refused(scored: dict[str, Any], alpha: httpx.Client) -> None:
    text = f"Only two layers ({uuid.uuid4().hex[:6]})."
    some = alpha.post("/v1/score", json={"model": MODEL, "text": text, "layers": [12, 3]}).json()
    assert some["layers"] == [3, 12]
    missing = alpha.get(f"/v1/records/{some['record_id']}/hidden", params={"layer": 5})
    assert missing.status_code == 409 and missing.json()["error"]["code"] == "layer_not_stored"
    assert missing.json()["error"]["param"] == "layer"
    plain = alpha.post("/v1/score", json={"model": MODEL, "text": text}).json()
    none = alpha.get(f"/v1/records/{plain['record_id']}/hidden", params={"layer": 3})
    assert none.status_code == 409 and none.json()["error"]["code"] == "layer_not_stored"
    past_end = alpha.get(
        f"/v1/records/{scored['record_id']}/hidden", params={"layer": 3, "stop": len(scored["tokens"]) + 1}
    )
    assert past_end.status_code == 422 and past_end.json()["error"]["code"] == "invalid_positions"
    gone = alpha.get(f"/v1/records/{uuid.uuid4().hex}/hidden", params={"layer": 3})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "record_not_found"
    for body, code, param in [
        ({"layers": [99]}, "invalid_layers", "layers"),
        ({"layers": [2, 2]}, "invalid_layers", "layers"),
        ({"layers": [2], "retain": "stats"}, "layers_need_full", "retain"),
    ]:
        refused = alpha.post("/v1/score", json={"model": MODEL, "text": text, **body})
        assert refused.status_code == 422, refused.text
        assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (code, param)
    negative = alpha.post("/v1/score", json={"model": MODEL, "text": text, "layers": [-1]})
    assert negative.status_code == 422


def test_layers_past_the_bound_per_record_are_422(alpha: httpx.Client) -> None:
    # 30 layers x 576 floats x 4 bytes = 69 KB a position: ~4,000 positions pass the default 256 MiB
    text = "word " * 5000
    refused = alpha.post("/v1/score", json={"model": MODEL, "text": text, "layers": "all"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "layers_too_large"


def test_kept_layers_count_against_the_record_bytes(alpha: httpx.Client, redis_client: redis.Redis) -> None:
    def counted() -> int:
        return int(redis_client.get(usage_key("alpha", int(time.time() // DAY_S))) or 0)

    before = counted()
    body = {"model": MODEL, "text": f"Counted layers ({uuid.uuid4().hex}).", "layers": [1, 2, 30]}
    scored = alpha.post("/v1/score", json=body).json()
    fields = redis_client.hgetall(f"lp:rec:alpha:{scored['record_id']}")
    assert {b"layer:1", b"layer:2"} <= set(fields) and b"layer:30" not in set(fields)  # the final one is `hidden`
    positions = len(scored["tokens"]) - 1
    assert len(fields[b"layer:1"]) > positions * 576 * 4
    assert counted() - before == sum(len(v) for v in fields.values())
    assert redis_client.ttl(f"lp:rec:alpha:{scored['record_id']}") > 0  # they expire with the record


WEATHER = ["It rained all morning", "The wind came from the north", "Snow fell on the hills", "A warm sun rose"]
WEATHER += ["Fog covered the valley", "Thunder rolled over the town"]
NUMBERS = ["Seven plus five is twelve", "She counted to forty", "Three times nine is", "The total was 1,204"]
NUMBERS += ["Divide eighty by four", "Nineteen is a prime number"]


def wait_head(client: httpx.Client, head_id: str) -> dict[str, Any]:
    for _ in range(1200):
        head = client.get(f"/v1/heads/{head_id}").json()
        if head["status"] in ("succeeded", "failed"):
            return dict(head)
        time.sleep(0.25)
    raise TimeoutError(head_id)


def test_probes_on_a_layer_and_on_the_best_layer(alpha: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:6]
    examples = [{"text": f"{t} ({tag})", "label": 0} for t in WEATHER] + [
        {"text": f"{t} ({tag})", "label": 1} for t in NUMBERS
    ]
    body = {"name": "topic_probe", "kind": "probe", "model": MODEL, "family": "detect", "examples": examples}
    created = alpha.post("/v1/heads", json={**body, "params": {"layer": 12}})
    assert created.status_code == 202, created.text
    on_twelve = wait_head(alpha, created.json()["id"])
    assert on_twelve["status"] == "succeeded", on_twelve
    assert on_twelve["metrics"]["layer"] == 12 and on_twelve["metrics"]["layer_auroc"] is None
    # its texts were scored keeping layer 12
    again = alpha.post("/v1/score", json={"model": MODEL, "text": examples[0]["text"], "layers": [12]}).json()
    assert again["cached"] is True

    # "best" over records that keep every layer: the chosen one is the one with the highest CV AUROC
    records = []
    for example in examples:
        scored = alpha.post("/v1/score", json={"model": MODEL, "text": example["text"], "layers": "all"}).json()
        records.append({"record_id": scored["record_id"], "label": example["label"]})
    best_body = {**body, "name": "best_probe", "examples": records, "params": {"layer": "best"}}
    created = alpha.post("/v1/heads", json=best_body)
    best = wait_head(alpha, created.json()["id"])
    assert best["status"] == "succeeded", best
    per_layer = {int(k): v for k, v in best["metrics"]["layer_auroc"].items()}
    assert sorted(per_layer) == list(range(31))
    assert best["metrics"]["layer"] == max(per_layer, key=lambda k: (per_layer[k], -k))
    assert best["metrics"]["auroc"] == per_layer[best["metrics"]["layer"]]

    # applied to a new text: the layer's states of its record, or of a record scored with that layer, alike
    text = f"Twenty minus six is fourteen ({tag})"
    heads = [on_twelve["id"], best["id"]]
    fresh = alpha.post("/v1/analysis/detect", json={"model": MODEL, "text": text, "heads": heads[:1]})
    assert fresh.status_code == 200, fresh.text
    kept = alpha.post("/v1/score", json={"model": MODEL, "text": text, "layers": "all"}).json()
    by_record = alpha.post("/v1/analysis/detect", json={"record_id": kept["record_id"], "heads": heads}).json()
    score = fresh.json()["sequence"]["topic_probe"]
    assert 0.0 <= score <= 1.0 and by_record["sequence"]["topic_probe"] == pytest.approx(score, abs=1e-9)
    assert 0.0 <= by_record["sequence"]["best_probe"] <= 1.0

    refused = alpha.post("/v1/heads", json={**body, "params": {"layer": 99}})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_params"
    plain = [
        {"record_id": alpha.post("/v1/score", json={"model": MODEL, "text": e["text"]}).json()["record_id"], **e}
        for e in examples
    ]
    plain = [{"record_id": e["record_id"], "label": e["label"]} for e in plain]
    missing = alpha.post("/v1/heads", json={**body, "examples": plain, "params": {"layer": 3}})
    assert missing.status_code == 409 and missing.json()["error"]["code"] == "layer_not_stored"


def test_the_python_client_asks_for_layers(service: str) -> None:
    from logprobe.client import Client

    with Client(service, api_key="key-alpha") as lp:
        scored = lp.score(MODEL, text=f"Client layers ({uuid.uuid4().hex[:6]}).", layers=[4, 2])
        assert scored.layers == [2, 4] and lp.record(scored.record_id).layers == [2, 4]


def test_the_lens_reads_the_layers_a_record_kept(scored: dict[str, Any], alpha: httpx.Client) -> None:
    body = {"layers": [0, 9, 20, 30], "top_logprobs": 2}
    kept = alpha.post("/v1/analysis/lens", json={"record_id": scored["record_id"], **body})
    forward = alpha.post("/v1/analysis/lens", json={"model": MODEL, "text": scored["text"], **body})
    assert kept.status_code == forward.status_code == 200, kept.text + forward.text
    assert kept.json()["record_id"] == scored["record_id"] != forward.json()["record_id"]
    for read, ran in zip(kept.json()["layers"], forward.json()["layers"], strict=True):
        assert read["layer"] == ran["layer"]
        for a, b in zip(read["tokens"][1:], ran["tokens"][1:], strict=True):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-5)
            assert a["kl_to_final"] == pytest.approx(b["kl_to_final"], abs=1e-5)
    assert [p["settled_layer"] for p in kept.json()["positions"]] == [
        p["settled_layer"] for p in forward.json()["positions"]
    ]
