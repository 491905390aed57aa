"""Two-model and two-context analyses through the real service, against float64 references from the models'
own logits: SmolLM2 with a tiny random Llama that shares its tokenizer, and Gemma-3 to show the refusal of
models that tokenize differently."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL, hf_logprobs
from workers.config import PACKAGED_MODELS
from workers.models import safetensors_dir

TEXT = "The river froze early that year, and the ferry stopped running before the first snow."
TOL = 1e-4  # the rows are float32 (the model's dtype): KL inherits their ~1e-5 relative rounding


@pytest.fixture(scope="module")
def pair_service(tiny_models: dict[str, str]) -> Iterator[httpx.Client]:
    """One worker hosting SmolLM2, the tiny Llama and Gemma-3-270M, so it serves every pair's jobs."""
    models = [MODEL, {"name": "tiny-llama", "source": "hf", "path": tiny_models["tiny-llama"]}, "gemma-3-270m"]
    env = {"LOGPROBE_MODELS": json.dumps(models), "LOGPROBE_DATA_DIR": str(DATA_DIR), "LOGPROBE_WORKER_THREADS": "2"}
    with (
        LocalService(env=env, log_dir=ARTIFACTS / "pairs") as service,
        httpx.Client(base_url=service.base_url, timeout=300) as client,
    ):
        yield client


def smollm2_dir() -> str:
    return str(safetensors_dir(PACKAGED_MODELS[MODEL], DATA_DIR)[0])


def analysis(client: httpx.Client, family: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/analysis/{family}", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_two_models_compare_and_detect(pair_service: httpx.Client, tiny_models: dict[str, str]) -> None:
    body = analysis(pair_service, "compare", model=MODEL, reference_model="tiny-llama", text=TEXT)
    scored = pair_service.post("/v1/score", json={"model": MODEL, "text": TEXT}).json()
    ids = [t["id"] for t in scored["tokens"]]
    logp = hf_logprobs(smollm2_dir(), ids)[:-1]
    logq = hf_logprobs(tiny_models["tiny-llama"], ids)[:-1]
    p, q = np.exp(logp), np.exp(logq)
    kl = (p * (logp - logq)).sum(axis=1)
    shift = np.array([1 + np.count_nonzero(b > b[np.argmax(a)]) for a, b in zip(logp, logq, strict=True)])
    assert body["record_id"] == scored["record_id"] and body["reference_model"] == "tiny-llama"
    np.testing.assert_allclose([t["values"]["kl"] for t in body["tokens"]], kl, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(
        [t["values"]["reverse_kl"] for t in body["tokens"]], (q * (logq - logp)).sum(axis=1), rtol=TOL, atol=TOL
    )
    np.testing.assert_array_equal([t["values"]["shift_rank"] for t in body["tokens"]], shift)
    assert body["sequence"]["mean_kl"] == pytest.approx(kl.mean(), rel=TOL)

    detect = analysis(
        pair_service,
        "detect",
        model=MODEL,
        reference_model="tiny-llama",
        text=TEXT,
        methods=["fast_detectgpt", "binoculars"],
    )
    lp_x = logp[np.arange(len(ids) - 1), ids[1:]]
    mu = (q * logp).sum(axis=1)
    var = (q * logp**2).sum(axis=1) - mu**2
    assert detect["sequence"]["fast_detectgpt"] == pytest.approx((lp_x.sum() - mu.sum()) / np.sqrt(var.sum()), rel=TOL)
    assert detect["sequence"]["binoculars"] == pytest.approx(-lp_x.mean() / -mu.mean(), rel=TOL)


def test_context_confidence_gain(pair_service: httpx.Client) -> None:
    context = "Ferries in the north stop when rivers freeze."
    body = analysis(pair_service, "compare", model=MODEL, context=context, text=TEXT)
    alone = pair_service.post("/v1/score", json={"model": MODEL, "text": TEXT}).json()["tokens"]
    assert [t["id"] for t in body["tokens"]] == [t["id"] for t in alone[1:]]
    ctx_ids = pair_service.post("/v1/score", json={"model": MODEL, "text": context}).json()["tokens"]
    with_context = hf_logprobs(smollm2_dir(), [t["id"] for t in ctx_ids] + [t["id"] for t in alone])
    entropy_with = -(np.exp(with_context) * with_context).sum(axis=1)[len(ctx_ids) : -1]
    gains = [t["values"]["confidence_gain"] for t in body["tokens"]]
    np.testing.assert_allclose(gains, np.array([t["entropy"] for t in alone[1:]]) - entropy_with, atol=1e-4)
    assert body["sequence"]["mean_confidence_gain"] == pytest.approx(np.mean(gains), abs=1e-9)


def test_drift_per_turn(pair_service: httpx.Client) -> None:
    messages = [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "An apple."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "A pear."},
    ]
    body = analysis(
        pair_service, "compare", model=MODEL, reference_model="tiny-llama", messages=messages, methods=["drift", "kl"]
    )
    per_turn = body["details"]["drift.per_turn"]
    assert len(per_turn) == len(messages)  # the template's default system prompt belongs to the first turn
    assert body["sequence"]["drift.mean"] == pytest.approx(np.mean(per_turn))


@pytest.mark.parametrize(
    ("family", "body", "status", "code"),
    [
        ("compare", {"model": MODEL, "reference_model": "gemma-3-270m", "text": TEXT}, 422, "tokenizer_mismatch"),
        ("detect", {"model": MODEL, "reference_model": "gemma-3-270m", "text": TEXT}, 422, "tokenizer_mismatch"),
        ("compare", {"model": MODEL, "text": TEXT}, 422, "reference_required"),
        ("detect", {"model": MODEL, "text": TEXT, "methods": ["binoculars"]}, 422, "reference_required"),
        (
            "compare",
            {"model": MODEL, "reference_model": "tiny-llama", "text": TEXT, "methods": ["drift"]},
            422,
            "reference_required",
        ),
        ("uncertainty", {"model": MODEL, "reference_model": "tiny-llama", "text": TEXT}, 422, "invalid_request"),
    ],
)
def test_pair_errors(pair_service: httpx.Client, family: str, body: dict[str, Any], status: int, code: str) -> None:
    response = pair_service.post(f"/v1/analysis/{family}", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
