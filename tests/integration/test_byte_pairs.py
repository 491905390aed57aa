"""Models that tokenize differently, through the real service: SmolLM2 (byte-level BPE) and Gemma-3-270M
(SentencePiece with byte fallback) compared, and paired for Binoculars and Fast-DetectGPT, byte by byte (Phan et
al. 2024), checked against float64 references computed here from the distributions that POST /v1/bytes returns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL

GEMMA = "gemma-3-270m"
TEXT = "The ferry stopped before the first snow, café."


@pytest.fixture(scope="module")
def byte_service() -> Iterator[httpx.Client]:
    env = {
        "LOGPROBE_MODELS": json.dumps([MODEL, GEMMA]),
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_WORKER_THREADS": "2",
    }
    with (
        LocalService(env=env, log_dir=ARTIFACTS / "byte_pairs") as service,
        httpx.Client(base_url=service.base_url, timeout=600) as client,
    ):
        yield client


def _bytes(client: httpx.Client, model: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/bytes", json={"model": model, "text": TEXT, "distributions": True, **extra})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _logdist(body: dict[str, Any]) -> np.ndarray:
    return np.array([[-np.inf if v is None else v for v in row["distribution"]] for row in body["bytes"]])


def test_bytes_endpoint_gives_each_bytes_exact_distribution(byte_service: httpx.Client) -> None:
    data = TEXT.encode()
    for model in (MODEL, GEMMA):
        body = _bytes(byte_service, model)
        assert body["n_bytes"] == len(data) and [row["byte"] for row in body["bytes"]] == list(data)
        logdist = _logdist(body)
        np.testing.assert_allclose(np.exp(logdist).sum(axis=1), 1.0, atol=1e-9)
        logprob = np.array([row["logprob"] for row in body["bytes"]])
        np.testing.assert_allclose(logprob, logdist[np.arange(len(data)), list(data)], atol=1e-12)
        assert np.all(logprob <= 0) and np.isfinite(logprob).all()
        assert body["logprob"] == pytest.approx(logprob.sum())
        assert -4.0 * len(data) < body["logprob"] < 0  # a real model: well under 4 nats per byte on plain English
        assert body["states"] >= len(data)
        assert [row["text"] for row in body["bytes"]][-3:] == ["é", "", "."]
        again = _bytes(byte_service, model)
        assert again["cached"] and again["record_id"] == body["record_id"]


def test_compare_and_binoculars_across_tokenizers(byte_service: httpx.Client) -> None:
    logp, logq = _logdist(_bytes(byte_service, MODEL)), _logdist(_bytes(byte_service, GEMMA))
    p, q = np.exp(logp), np.exp(logq)
    lp, lq = np.maximum(logp, -700.0), np.maximum(logq, -700.0)
    data = list(TEXT.encode())
    response = byte_service.post(
        "/v1/analysis/compare", json={"model": MODEL, "reference_model": GEMMA, "text": TEXT, "methods": ["kl", "js"]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["level"] == "byte" and body["n_positions"] == len(data)
    assert [t["id"] for t in body["tokens"]] == data
    kl = np.array([t["values"]["kl"] for t in body["tokens"]])
    np.testing.assert_allclose(kl, (p * (lp - lq)).sum(axis=1), rtol=1e-9, atol=1e-12)
    assert np.isfinite(kl).all() and kl.min() >= -1e-12 and 0 < kl.mean() < 5

    response = byte_service.post(
        "/v1/analysis/detect",
        json={"model": MODEL, "reference_model": GEMMA, "text": TEXT, "methods": ["binoculars", "fast_detectgpt"]},
    )
    assert response.status_code == 200, response.text
    sequence = response.json()["sequence"]
    observed = logp[np.arange(len(data)), data]
    cross = -np.mean((q * lp).sum(axis=1))
    assert sequence["binoculars"] == pytest.approx(-np.mean(observed) / cross, rel=1e-5)  # float32 logprobs
    assert 0.1 < sequence["binoculars"] < 3.0
    mu, m2 = (q * lp).sum(axis=1), (q * lp**2).sum(axis=1)
    discrepancy = (observed.sum() - mu.sum()) / np.sqrt((m2 - mu**2).sum())
    assert sequence["fast_detectgpt"] == pytest.approx(discrepancy, rel=1e-4)
    assert -20 < sequence["fast_detectgpt"] < 20


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/bytes", {"model": MODEL, "text": TEXT, "max_states": 5}, 422, "cover_set_too_large"),
        ("/v1/bytes", {"model": MODEL, "text": "ab" * 2100}, 422, "text_too_long"),
        (
            "/v1/analysis/compare",
            {"model": MODEL, "reference_model": GEMMA, "messages": [{"role": "user", "content": "Hi"}]},
            422,
            "tokenizer_mismatch",
        ),
    ],
)
def test_byte_level_refusals(
    byte_service: httpx.Client, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    response = byte_service.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
