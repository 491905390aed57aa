"""Lastde++ end to end on SmolLM2: the worker draws the samples from the record's rows, seeded; the value equals
the reference code's formula (tests/unit/test_lastde_plusplus.py) over draws repeated here from transformers' own
logits by the documented rule (workers/token_samples.py)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import MODEL
from tests.unit.test_lastde_plusplus import draws, lastde_plusplus_reference

TEXT = (
    "The lighthouse keeper wrote the weather into a ledger every evening: the wind, the height of the swell, the "
    "ships that passed and the ones that did not. When the station was automated, the ledgers went to the museum."
)
N_SAMPLES = 24


def detect(client: httpx.Client, seed: int, **params: Any) -> httpx.Response:
    body = {
        "model": MODEL,
        "text": TEXT,
        "methods": ["lastde_plusplus"],
        "params": {"lastde_plusplus": {"n_samples": N_SAMPLES, "seed": seed, **params}},
    }
    return client.post("/v1/analysis/detect", json=body)


def test_lastde_plusplus_equals_the_reference_from_transformers_logits(
    alpha: httpx.Client, hf_smollm2: tuple[Any, Any]
) -> None:
    first = detect(alpha, 7)
    assert first.status_code == 200, first.text
    again, other = detect(alpha, 7), detect(alpha, 8)
    value = first.json()["sequence"]["lastde_plusplus"]
    assert again.json()["sequence"]["lastde_plusplus"] == value  # same seed, same draws, same value
    assert other.json()["sequence"]["lastde_plusplus"] != value

    model, tokenizer = hf_smollm2
    ids = tokenizer(TEXT).input_ids
    assert first.json()["n_positions"] == len(ids) - 1
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    logp = torch.log_softmax(logits, -1).numpy()  # float32, as the worker rebuilds its rows
    samples = draws(logp.astype(np.float64), N_SAMPLES, 7)
    targets = np.asarray(ids[1:])
    expected = lastde_plusplus_reference(logp.astype(np.float64), targets, samples)
    assert np.isfinite(expected)
    assert value == pytest.approx(expected, abs=1e-5)


def test_lastde_plusplus_is_refused_with_a_reference_model_and_bounded(alpha: httpx.Client) -> None:
    body = {"model": MODEL, "reference_model": MODEL, "text": TEXT, "methods": ["lastde_plusplus"]}
    refused = alpha.post("/v1/analysis/detect", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["param"] == "reference_model"
    too_many = detect(alpha, 0, n_samples=1001)
    assert too_many.status_code == 422, too_many.text
    assert too_many.json()["error"]["param"] == "params.lastde_plusplus.n_samples"
    body = {"model": MODEL, "text": TEXT * 40, "methods": ["lastde_plusplus"]}
    body["params"] = {"lastde_plusplus": {"n_samples": 1000}}
    too_large = alpha.post("/v1/analysis/detect", json=body)
    assert too_large.status_code == 422, too_large.text
    error = too_large.json()["error"]
    assert (error["code"], error["param"]) == ("samples_too_large", "params.lastde_plusplus.n_samples")
    default = alpha.post("/v1/analysis/detect", json={"model": MODEL, "text": TEXT}).json()
    assert "lastde_plusplus" not in default["methods"]  # named only: it costs the worker a pass over the rows


def test_lastde_plusplus_is_listed_with_its_paper_and_parameters(alpha: httpx.Client) -> None:
    listed = {m["name"]: m for m in alpha.get("/v1/analysis/methods").json()}["lastde_plusplus"]
    assert "arXiv:2410.06072" in listed["paper"] and listed["families"] == ["detect"]
    assert listed["requires"] == ["token_samples"]
    defaults = {p["name"]: p["default"] for p in listed["params"]}
    assert defaults == {"embed_size": 4, "epsilon": 8.0, "tau_prime": 15, "n_samples": 100, "seed": 0}
