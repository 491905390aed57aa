"""Analyses over real records through the real service."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import MODEL

TEXT = (
    "The committee met on Tuesday to discuss the budget for the new library. After a long debate, "
    "the members agreed to fund the project in two stages, starting next spring."
)


def post(client: httpx.Client, family: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/analysis/{family}", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_uncertainty_agrees_with_the_scored_tokens(alpha: httpx.Client) -> None:
    scored = alpha.post("/v1/score", json={"model": MODEL, "text": TEXT}).json()
    body = post(alpha, "uncertainty", record_id=scored["record_id"], params={"entropy_trend": {"block_size": 4}})
    assert body["cached"] is True and body["n_positions"] == scored["n_tokens"] - 1
    for token, scored_token in zip(body["tokens"], scored["tokens"][1:], strict=True):
        assert token["id"] == scored_token["id"] and token["text"] == scored_token["text"]
        assert token["values"]["logprob"] == pytest.approx(scored_token["logprob"], abs=1e-6)
        assert token["values"]["entropy"] == pytest.approx(scored_token["entropy"], abs=1e-5)
        assert token["values"]["rank"] == scored_token["rank"] and type(token["values"]["rank"]) is int
    logprobs = np.array([t["logprob"] for t in scored["tokens"][1:]])
    seq = body["sequence"]
    assert seq["perplexity"] == pytest.approx(np.exp(-logprobs.mean()), rel=1e-5)
    assert seq["geometric_mean_prob"] == pytest.approx(1 / seq["perplexity"], rel=1e-6)
    assert len(body["details"]["entropy_trend.blocks"]) == -(-body["n_positions"] // 4)


def test_text_input_spans_and_method_choice(alpha: httpx.Client) -> None:
    body = post(
        alpha, "detect", model=MODEL, text=TEXT, methods=["log_likelihood", "gltr"], span={"start": 5, "stop": 9}
    )
    assert body["methods"] == ["log_likelihood", "gltr"] and body["n_positions"] == 4 and body["tokens"] == []
    assert sum(v for k, v in body["sequence"].items() if k.startswith("gltr.")) == pytest.approx(1.0)
    generated = alpha.post(
        "/v1/generate", json={"model": MODEL, "prompt": "Count: 1, 2, 3,", "temperature": 0, "max_tokens": 6}
    ).json()
    completion = post(alpha, "uncertainty", record_id=generated["record_id"], span="completion", methods=["logprob"])
    assert [t["values"]["logprob"] for t in completion["tokens"]] == pytest.approx(
        [t["logprob"] for t in generated["tokens"]], abs=1e-6
    )
    prompt = post(alpha, "uncertainty", record_id=generated["record_id"], span="prompt", methods=["logprob"])
    assert prompt["n_positions"] == generated["usage"]["prompt_tokens"] - 1


def test_membership_with_default_and_custom_frequency_tables(alpha: httpx.Client, beta: httpx.Client) -> None:
    default = post(alpha, "membership", model=MODEL, text=TEXT)
    assert set(default["sequence"]) == {"min_k", "min_k_plus_plus", "dc_pdd"}
    assert 0 < default["sequence"]["dc_pdd"] <= 0.01
    table = alpha.put("/v1/frequency-tables/library", json={"model": MODEL, "texts": [TEXT, "The library opened."]})
    assert table.status_code == 200 and table.json()["texts"] == 2
    custom = post(alpha, "membership", model=MODEL, text=TEXT, methods=["dc_pdd"], frequency_table="library")
    assert custom["sequence"]["dc_pdd"] != default["sequence"]["dc_pdd"]
    missing = beta.post("/v1/analysis/membership", json={"model": MODEL, "text": TEXT, "frequency_table": "library"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "frequency_table_not_found"


def test_methods_are_listed(alpha: httpx.Client) -> None:
    listed = alpha.get("/v1/analysis/methods").json()
    methods = {m["name"]: m for m in listed}
    assert {"entropy", "fast_detectgpt", "min_k_plus_plus", "dc_pdd"} <= set(methods)
    assert methods["min_k"]["params"][0]["name"] == "k" and "Min-K%" in methods["min_k"]["description"]
    for m in listed:
        assert m["paper"] and "\n" not in m["description"] and "  " not in m["description"], m["name"]
    assert "arXiv:2310.16789" in methods["min_k"]["paper"] and "Binoculars" in methods["binoculars"]["paper"]
    block = methods["entropy_trend"]["params"][0]
    assert block["type"] == "int" and [type(block[k]) for k in ("default", "min", "max")] == [int, int, int]
    assert (block["default"], block["min"]) == (16, 1)
    k = methods["min_k"]["params"][0]
    assert k["type"] == "float" and k["default"] == 0.2


def test_integer_parameters_take_integers(alpha: httpx.Client) -> None:
    body = post(
        alpha,
        "uncertainty",
        model=MODEL,
        text=TEXT,
        methods=["entropy_trend"],
        params={"entropy_trend": {"block_size": 5}},
    )
    assert len(body["details"]["entropy_trend.blocks"]) == -(-body["n_positions"] // 5)
    response = alpha.post(
        "/v1/analysis/uncertainty",
        json={
            "model": MODEL,
            "text": TEXT,
            "methods": ["entropy_trend"],
            "params": {"entropy_trend": {"block_size": 2.5}},
        },
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_params"
    assert "entropy_trend.block_size must be an integer" in response.json()["error"]["message"]


def test_span_lists_are_distinct_and_capped_by_the_record(alpha: httpx.Client) -> None:
    body = post(alpha, "uncertainty", model=MODEL, text=TEXT, span=[4, 2, 1], methods=["logprob"])
    assert [t["position"] for t in body["tokens"]] == [4, 2, 1]
    repeated = alpha.post("/v1/analysis/uncertainty", json={"model": MODEL, "text": TEXT, "span": [2, 2, 1]})
    assert repeated.status_code == 422 and repeated.json()["error"]["code"] == "invalid_span"
    assert "position 2 appears more than once" in repeated.json()["error"]["message"]
    n = len(alpha.post("/v1/score", json={"model": MODEL, "text": TEXT}).json()["tokens"])
    too_many = alpha.post("/v1/analysis/uncertainty", json={"model": MODEL, "text": TEXT, "span": [1] * n})
    assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "span"
    assert f"at most {n - 1} positions" in too_many.json()["error"]["message"]


@pytest.mark.parametrize(
    ("family", "body", "status", "code"),
    [
        ("uncertainty", {"model": MODEL, "text": TEXT, "methods": ["nope"]}, 422, "unknown_method"),
        ("membership", {"model": MODEL, "text": TEXT, "params": {"min_k": {"k": 5}}}, 422, "invalid_params"),
        ("uncertainty", {"model": MODEL, "text": TEXT, "span": "completion"}, 422, "invalid_span"),
        ("uncertainty", {"model": MODEL, "text": TEXT, "span": [0]}, 422, "invalid_span"),
        ("uncertainty", {"model": MODEL, "text": TEXT, "span": [3, 2, 3]}, 422, "invalid_span"),
        ("uncertainty", {"model": MODEL, "text": TEXT, "span": "last_turn"}, 422, "invalid_span"),
        ("uncertainty", {"model": MODEL, "text": TEXT, "reference_model": MODEL}, 422, "invalid_request"),
        ("membership", {"model": MODEL, "text": TEXT, "context": "c"}, 422, "invalid_request"),
        ("uncertainty", {"model": MODEL, "text": TEXT, "span": {"start": 3, "stop": 999}}, 422, "invalid_span"),
        ("uncertainty", {"text": TEXT}, 422, "missing_input"),
        ("uncertainty", {"record_id": "0" * 32}, 404, "record_not_found"),
        ("detect", {"model": "no-such-model", "text": TEXT}, 404, "model_not_found"),
    ],
)
def test_analysis_errors(alpha: httpx.Client, family: str, body: dict[str, Any], status: int, code: str) -> None:
    response = alpha.post(f"/v1/analysis/{family}", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_other_tenants_records_are_not_found(alpha: httpx.Client, beta: httpx.Client) -> None:
    rid = alpha.post("/v1/score", json={"model": MODEL, "text": "Tenant-private analysis."}).json()["record_id"]
    response = beta.post("/v1/analysis/uncertainty", json={"record_id": rid})
    assert response.status_code == 404 and response.json()["error"]["code"] == "record_not_found"


def test_an_unknown_reference_model_is_named_as_such(alpha: httpx.Client) -> None:
    response = alpha.post(
        "/v1/analysis/compare", json={"model": MODEL, "text": "Some text.", "reference_model": "no-such"}
    )
    assert response.status_code == 404
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (
        "model_not_found",
        "reference_model",
    )
    batch = alpha.post(
        "/v1/batches",
        json={
            "model": MODEL,
            "inputs": [{"text": "x"}],
            "analyses": [{"family": "compare", "reference_model": "no-such"}],
        },
    )
    assert batch.status_code == 404 and batch.json()["error"]["param"] == "analyses.0.reference_model"
