"""Heads end to end on a real worker: human plot summaries that ship in a package against SmolLM2's own
continuations of their openings, a PAWN head trained from texts (scored first), LOS and probe heads from the
records, used in detect and in a batch; tenants never see each other's heads; each bad input has its own code.
A tiny random Llama sharing SmolLM2's tokenizer makes records of another model (head_model_mismatch, mixed_models).
A stack head combines the two models' log-likelihoods on a set built so that it beats each of them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from safetensors.numpy import load as st_load

from app.analysis.heads import sigmoid, stack_forward
from app.launcher.local_service import LocalService
from app.serving import corpus
from tests.conftest import ARTIFACTS, MODEL, service_env
from workers.contract.keys import head_key

N_PER_CLASS = 6
# A stack of the two served models' log-likelihoods.
STACK = [{"method": "log_likelihood"}, {"method": "log_likelihood", "model": "tiny-llama"}]


@pytest.fixture(scope="module")
def heads_service(tiny_models: dict[str, str]) -> Iterator[LocalService]:
    models = [MODEL, {"name": "tiny-llama", "source": "hf", "path": tiny_models["tiny-llama"]}]
    with LocalService(env=service_env(models), log_dir=ARTIFACTS / "heads") as service:
        yield service


@pytest.fixture(scope="module")
def clients(heads_service: LocalService) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    url = heads_service.base_url
    with (
        httpx.Client(base_url=url, headers={"Authorization": "Bearer key-alpha"}, timeout=300) as a,
        httpx.Client(base_url=url, headers={"Authorization": "Bearer key-beta"}, timeout=300) as b,
    ):
        yield a, b


@pytest.fixture(scope="module")
def labelled(clients: tuple[httpx.Client, httpx.Client]) -> list[dict[str, Any]]:
    """Label 0: the first 45 words of a plot summary; label 1: its 12-word opening continued by SmolLM2."""
    alpha, _ = clients
    examples = []
    for plot in corpus.plots()[:N_PER_CLASS]:
        words = plot.split()
        opening = " ".join(words[:12])
        examples.append({"text": " ".join(words[:45]), "label": 0})
        body = alpha.post(
            "/v1/generate", json={"model": MODEL, "prompt": opening, "temperature": 0, "max_tokens": 40}
        ).json()
        examples.append({"text": opening + body["text"], "label": 1})
    return examples


@pytest.fixture(scope="module")
def stack_labelled(clients: tuple[httpx.Client, httpx.Client], labelled: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Built so that each of two features misses half of the machine texts: label 1 are SmolLM2's continuations
    (`labelled`: SmolLM2's own log-likelihood is high, the random model's as for human text) and the tiny random
    Llama's greedy continuations (the random model's log-likelihood is high, SmolLM2's low); label 0 are twice as
    many human summaries."""
    alpha, _ = clients
    plots = corpus.plots()[N_PER_CLASS : 3 * N_PER_CLASS]
    examples = [*labelled, *({"text": " ".join(p.split()[:45]), "label": 0} for p in plots[N_PER_CLASS:])]
    for plot in plots[:N_PER_CLASS]:
        opening = " ".join(plot.split()[:12])
        body = {"model": "tiny-llama", "prompt": opening, "temperature": 0, "max_tokens": 40}
        examples.append({"text": opening + alpha.post("/v1/generate", json=body).json()["text"], "label": 1})
    return examples


def wait_head(client: httpx.Client, head_id: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen = set()
    while time.monotonic() < deadline:
        head = client.get(f"/v1/heads/{head_id}").json()
        seen.add(head["status"])
        assert 0.0 <= head["progress"] <= 1.0
        if head["status"] in ("succeeded", "failed"):
            head["seen"] = seen
            return head  # type: ignore[no-any-return]
        time.sleep(0.3)
    raise TimeoutError(head_id)


def batch_line(client: httpx.Client, text: str, analysis: dict[str, Any]) -> dict[str, Any]:
    """The result line of a one-text batch running `analysis`, once the batch completed."""
    batch = client.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": text}], "analyses": [analysis]}).json()
    deadline = time.monotonic() + 120
    while client.get(f"/v1/batches/{batch['id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    return json.loads(client.get(f"/v1/batches/{batch['id']}/results").text.splitlines()[0])  # type: ignore[no-any-return]


def train(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/heads", json={"model": MODEL, "family": "detect", "seed": 1, **body})
    assert response.status_code == 202, response.text
    head = wait_head(client, response.json()["id"])
    assert head["status"] == "succeeded", head
    return head


def test_heads_train_on_texts_and_records_and_answer_in_detect_and_batches(
    clients: tuple[httpx.Client, httpx.Client], labelled: list[dict[str, Any]]
) -> None:
    alpha, beta = clients
    pawn = train(alpha, name="pawn_detector", kind="pawn", examples=labelled, params={"gate_dims": 8})
    assert pawn["id"].startswith("head_") and pawn["object"] == "head" and pawn["kind"] == "pawn"
    assert pawn["examples"] == {"0": N_PER_CLASS, "1": N_PER_CLASS} and pawn["progress"] == 1.0
    metrics = pawn["metrics"]
    assert metrics["folds"] == 5 and len(metrics["auroc_folds"]) == 5
    assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["target_fpr"] == 0.05
    assert metrics["fpr"] <= 0.05 and "rough" in metrics["confidence"]  # 8 + 8 examples: said plainly
    assert pawn["training_time_s"] > 0 and pawn["n_parameters"] > 1000 and pawn["params"]["gate_dims"] == 8

    # Every text now has a record: the same examples by record id, for the other two kinds.
    records = []
    for example in labelled:
        scored = alpha.post("/v1/score", json={"model": MODEL, "text": example["text"]}).json()
        assert scored["cached"] is True  # the head's training scored it
        records.append({"record_id": scored["record_id"], "label": example["label"]})
    los = train(alpha, name="los_detector", kind="los", examples=records, params={"topk": 10})
    probe = train(alpha, name="probe_detector", kind="probe", examples=records, params={"pool": "last"})
    assert "scoring" not in los["seen"] | probe["seen"]  # records given: nothing to score
    # (6 + 6 examples make folds of two or three: what the heads learn is tested on synthetic records, unit tests)
    assert len(los["metrics"]["auroc_folds"]) == 5 and los["params"]["topk"] == 10

    machine = labelled[1]["text"]
    ids = [pawn["id"], los["id"], probe["id"]]
    detect = alpha.post("/v1/analysis/detect", json={"model": MODEL, "text": machine, "heads": ids}).json()
    assert detect["cached"] is True
    for head in (pawn, los, probe):
        score = detect["sequence"][head["name"]]
        assert 0.0 <= score <= 1.0
        decision = detect["decisions"][head["name"]]
        assert decision["threshold"] == head["metrics"]["threshold"]
        assert decision["positive"] == decision["machine"] == (score > decision["threshold"])
    gates = np.array([t["values"]["pawn_detector"] for t in detect["tokens"]])
    assert gates.shape == (detect["n_positions"],) and abs(gates.sum() - 1.0) < 1e-6 and (gates > 0).all()
    assert "probe_detector" not in detect["tokens"][0]["values"]  # a probe has no per-token weights
    plain = alpha.post("/v1/analysis/detect", json={"model": MODEL, "text": machine}).json()
    assert plain["decisions"] is None and "pawn_detector" not in plain["sequence"]
    assert plain["sequence"]["log_likelihood"] == detect["sequence"]["log_likelihood"]

    # The same head through a batch gives the same score.
    line = batch_line(alpha, machine, {"family": "detect", "methods": ["log_likelihood"], "heads": [pawn["id"]]})
    assert line["results"]["detect"]["sequence"]["pawn_detector"] == pytest.approx(
        detect["sequence"]["pawn_detector"], rel=1e-12
    )

    # The inputs heads read are exported too: hidden states (model dtype, paged) and features.
    rid = detect["record_id"]
    response = alpha.get(f"/v1/records/{rid}/hidden", params={"start": 2, "stop": 7})
    assert response.status_code == 200 and response.headers["x-logprobe-dtype"] == "float32"
    hidden = st_load(response.content)["hidden"]
    assert hidden.shape == (5, 576) and hidden.dtype == np.float32 and np.isfinite(hidden).all()
    whole = st_load(alpha.get(f"/v1/records/{rid}/hidden").content)["hidden"]
    np.testing.assert_array_equal(whole[1:6], hidden)
    features = alpha.get(f"/v1/records/{rid}/features", params={"start": 2}).json()
    assert features["pawn"]["names"][0] == "logprob" and len(features["pawn"]["values"]) == detect["n_positions"] - 1
    logprobs = [
        t["values"]["logprob"]
        for t in alpha.post("/v1/analysis/uncertainty", json={"record_id": rid, "methods": ["logprob"]}).json()[
            "tokens"
        ]
    ]
    np.testing.assert_allclose([row[0] for row in features["pawn"]["values"]], logprobs[1:], rtol=1e-6)
    assert len(features["los"]["names"]) == 21 and features["los"]["names"][-1] == "p_token"

    # Tenants: beta sees none of alpha's heads.
    listed = alpha.get("/v1/heads").json()["data"]
    assert {h["id"] for h in listed} >= set(ids)
    assert all(h["id"] not in ids for h in beta.get("/v1/heads").json()["data"])
    assert beta.get(f"/v1/heads/{pawn['id']}").status_code == 404
    assert beta.delete(f"/v1/heads/{pawn['id']}").status_code == 404
    refused = beta.post("/v1/analysis/detect", json={"model": MODEL, "text": machine, "heads": [pawn["id"]]})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "head_not_found"
    analyses = [{"family": "detect", "heads": [pawn["id"]]}]
    refused = beta.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": machine}], "analyses": analyses})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "head_not_found"  # checked at submit

    # A head belongs to its model's weights, and to its family.
    other = alpha.post("/v1/analysis/detect", json={"model": "tiny-llama", "text": machine, "heads": [los["id"]]})
    assert other.status_code == 422 and other.json()["error"]["code"] == "head_model_mismatch"
    family = alpha.post("/v1/analysis/uncertainty", json={"model": MODEL, "text": machine, "heads": [los["id"]]})
    assert family.status_code == 422 and family.json()["error"]["code"] == "head_family_mismatch"

    assert alpha.delete(f"/v1/heads/{probe['id']}").status_code == 204
    assert alpha.get(f"/v1/heads/{probe['id']}").status_code == 404
    gone = alpha.post("/v1/analysis/detect", json={"model": MODEL, "text": machine, "heads": [probe["id"]]})
    assert gone.status_code == 404


def test_training_is_reproducible_through_the_service(
    clients: tuple[httpx.Client, httpx.Client], labelled: list[dict[str, Any]]
) -> None:
    alpha, _ = clients
    a = train(alpha, name="los_a", kind="los", examples=labelled, seed=5)
    b = train(alpha, name="los_b", kind="los", examples=labelled, seed=5)
    assert a["metrics"] == b["metrics"]


def test_each_bad_input_has_its_own_code(
    clients: tuple[httpx.Client, httpx.Client], labelled: list[dict[str, Any]]
) -> None:
    alpha, _ = clients
    texts = [{"text": e["text"], "label": e["label"]} for e in labelled]
    other = alpha.post("/v1/score", json={"model": "tiny-llama", "text": labelled[0]["text"]}).json()["record_id"]
    cases = [
        ({"examples": [*texts[:-1], {"text": "x", "label": 2}]}, "invalid_label"),
        ({"examples": [*texts[:-1], {"text": "x", "label": "machine"}]}, "invalid_label"),
        ({"examples": [{"text": e["text"], "label": 1} for e in labelled]}, "single_class"),
        ({"examples": texts[:6]}, "too_few_examples"),
        ({"examples": [*texts, {"record_id": "0" * 32, "label": 1}]}, "unknown_record"),
        ({"examples": [*texts, {"record_id": other, "label": 1}]}, "mixed_models"),
        ({"examples": texts, "params": {"pool": "max"}}, "invalid_params"),
        ({"examples": texts, "name": "log_rank"}, "invalid_head_name"),
    ]
    for change, code in cases:
        body = {"name": "bad", "kind": "pawn", "model": MODEL, **change}
        response = alpha.post("/v1/heads", json=body)
        assert response.status_code == 422, (code, response.text)
        assert response.json()["error"]["code"] == code, response.text
    assert all(h["name"] != "bad" for h in alpha.get("/v1/heads").json()["data"])  # nothing was stored

    # A text that cannot be scored is refused before anything runs, naming the example (texts are tokenized first).
    too_long = {"text": "word " * 20000, "label": 1}
    response = alpha.post(
        "/v1/heads", json={"name": "doomed", "kind": "los", "model": MODEL, "examples": [*texts, too_long]}
    )
    error = response.json()["error"]
    assert response.status_code == 422 and error["code"] == "context_length_exceeded"
    assert error["param"] == f"examples.{len(texts)}"
    # A head still training cannot answer yet (at the largest sizes it trains for minutes; deleting it stops it).
    slow = {"max_epochs": 1000, "patience": 1000, "width": 1024, "batch_size": 1}
    response = alpha.post(
        "/v1/heads", json={"name": "slow", "kind": "los", "model": MODEL, "examples": texts, "params": slow}
    )
    assert response.status_code == 202
    refused = alpha.post(
        "/v1/analysis/detect", json={"model": MODEL, "text": "Hello there.", "heads": [response.json()["id"]]}
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "head_not_ready"
    assert alpha.delete(f"/v1/heads/{response.json()['id']}").status_code in (200, 204)


def test_a_stack_of_two_models_beats_each_of_its_features(
    heads_service: LocalService, clients: tuple[httpx.Client, httpx.Client], stack_labelled: list[dict[str, Any]]
) -> None:
    alpha, _ = clients
    response = alpha.post(
        "/v1/heads",
        json={"name": "two_models", "kind": "stack", "model": MODEL, "examples": stack_labelled, "features": STACK},
    )
    assert response.status_code == 202, response.text
    head = wait_head(alpha, response.json()["id"])
    assert head["status"] == "succeeded", head
    assert head["kind"] == "stack" and head["features"][1]["model"] == "tiny-llama"
    metrics = head["metrics"]
    alone = metrics["feature_auroc"]
    assert set(alone) == {"log_likelihood", "log_likelihood@tiny-llama"}
    assert metrics["auroc"] >= 0.95 and all(metrics["auroc"] > a + 0.1 for a in alone.values()), metrics
    assert "scoring" in head["seen"] or head["progress"] == 1.0

    # In detect: the head's score is its forward over the two methods' own values for the text.
    text = stack_labelled[-1]["text"]  # written by the tiny model
    detect = alpha.post("/v1/analysis/detect", json={"model": MODEL, "text": text, "heads": [head["id"]]}).json()
    tiny = alpha.post("/v1/analysis/detect", json={"model": "tiny-llama", "text": text}).json()
    values = np.array([detect["sequence"]["log_likelihood"], tiny["sequence"]["log_likelihood"]])
    with redis.Redis.from_url(heads_service.redis_url) as client:  # the stored weights, as the gateway reads them
        weights = st_load(client.hget(head_key("alpha", head["id"]), "weights"))
    expected = sigmoid(stack_forward({k: v.astype(np.float64) for k, v in weights.items()}, values))
    assert detect["sequence"]["two_models"] == pytest.approx(expected, rel=1e-9)
    assert detect["decisions"]["two_models"]["positive"] == (expected > metrics["threshold"])
    assert detect["tokens"] == []  # one value per text: no per-token weights

    # In a batch: the same score.
    line = batch_line(alpha, text, {"family": "detect", "heads": [head["id"]]})
    assert line["results"]["detect"]["sequence"]["two_models"] == pytest.approx(expected, rel=1e-9)

    # A record alone cannot feed the tiny model's feature: the text is needed.
    refused = alpha.post("/v1/analysis/detect", json={"record_id": detect["record_id"], "heads": [head["id"]]})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "stack_needs_text"


def test_bad_stack_requests_have_their_own_codes(
    clients: tuple[httpx.Client, httpx.Client], labelled: list[dict[str, Any]]
) -> None:
    alpha, _ = clients
    base = {"name": "s", "kind": "stack", "model": MODEL, "examples": labelled}
    cases = [
        ({**base}, "invalid_features", "features"),
        ({**base, "features": [{"method": "entropy"}]}, "invalid_features", "features.0.method"),
        ({**base, "features": [{"method": "log_likelihood", "model": "nope"}]}, "model_not_found", "features.0.model"),
        ({**base, "kind": "los", "features": STACK}, "invalid_request", "features"),
    ]
    for body, code, param in cases:
        response = alpha.post("/v1/heads", json=body)
        error = response.json()["error"]
        assert response.status_code in (404, 422) and (error["code"], error["param"]) == (code, param), body


def test_a_stack_reads_consistency_of_the_answers_it_judges(
    heads_service: LocalService, clients: tuple[httpx.Client, httpx.Client]
) -> None:
    """Consistency methods as stack features (#31): each example's messages are a question and the answer judged;
    the head's score in an analysis is its forward over the values /v1/analysis/consistency gives for the same
    question, answer and seeded samples. The tiny model keeps the 2 samples per text cheap."""
    alpha, _ = clients
    options = {"n": 2, "max_tokens": 4, "seed": 7, "temperature": 1.0}
    features = [{"method": "lexical_similarity", "consistency": options}, {"method": "perplexity"}]

    def chat(i: int) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": str(2 * i) if i % 2 else f"I think it is {i + 3}."},
        ]

    examples = [{"messages": chat(i), "label": i % 2} for i in range(10)]
    body = {"name": "judged", "kind": "stack", "family": "uncertainty", "model": "tiny-llama", "examples": examples}
    response = alpha.post("/v1/heads", json={**body, "features": features})
    assert response.status_code == 202, response.text
    head = wait_head(alpha, response.json()["id"])
    assert head["status"] == "succeeded", head
    assert head["features"][0]["family"] == "consistency" and head["features"][0]["consistency"]["n"] == 2

    messages = chat(11)
    judged = alpha.post(
        "/v1/analysis/uncertainty",
        json={"model": "tiny-llama", "messages": messages, "methods": ["perplexity"], "heads": [head["id"]]},
    )
    assert judged.status_code == 200, judged.text
    alone = alpha.post(
        "/v1/analysis/consistency",
        json={"model": "tiny-llama", "messages": messages[:1], "answer": messages[1]["content"], **options},
    ).json()
    values = np.array([alone["sequence"]["lexical_similarity"], judged.json()["sequence"]["perplexity"]])
    with redis.Redis.from_url(heads_service.redis_url) as client:
        weights = st_load(client.hget(head_key("alpha", head["id"]), "weights"))
    expected = sigmoid(stack_forward({k: v.astype(np.float64) for k, v in weights.items()}, values))
    assert judged.json()["sequence"]["judged"] == pytest.approx(expected, rel=1e-9)

    refused = alpha.post(
        "/v1/analysis/uncertainty", json={"model": "tiny-llama", "text": "Four.", "heads": [head["id"]]}
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "stack_needs_messages"
