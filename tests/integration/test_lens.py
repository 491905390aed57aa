"""POST /v1/analysis/lens (issue #32): the logit lens (nostalgebraist 2020) on the packaged SmolLM2, every number
checked against transformers' own model in float64: layer L's states (hidden_states[L], through the final norm below
the last layer) times the unembedding. At the last layer the lens is the record's own rows."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from logprobe.client import Client
from tests.conftest import MODEL

pytestmark = pytest.mark.slow

TEXT = "The Eiffel Tower is in Paris, the capital of France. It was finished in 1889"


def reference(model: Any, ids: list[int]) -> list[np.ndarray]:
    """Every layer's logprob rows [T, V] in float64, independently of the service."""
    with torch.inference_mode():
        states = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        last = len(states) - 1
        weight = model.lm_head.weight.double()
        out = []
        for layer, h in enumerate(states):
            read = h[0] if layer == last else model.model.norm(h[0])
            out.append(torch.log_softmax(read.double() @ weight.T, dim=-1).numpy())
    return out


@pytest.fixture(scope="module")
def answer(service: str) -> dict[str, Any]:
    with httpx.Client(base_url=service, headers={"Authorization": "Bearer key-alpha"}, timeout=300) as alpha:
        response = alpha.post(
            "/v1/analysis/lens", json={"model": MODEL, "text": f"{TEXT} ({uuid.uuid4().hex[:6]})", "top_logprobs": 3}
        )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_every_layer_equals_transformers_read_through_the_final_norm(
    answer: dict[str, Any], hf_smollm2: tuple[Any, Any]
) -> None:
    model, _ = hf_smollm2
    ids = [p["id"] for p in answer["positions"]]
    rows = reference(model, ids)
    n = model.config.num_hidden_layers
    assert answer["n_layers"] == n and [layer["layer"] for layer in answer["layers"]] == list(range(n + 1))
    final = rows[n][:-1]
    for layer in answer["layers"]:
        logp = rows[layer["layer"]][:-1]  # row i predicts token i + 1
        assert layer["tokens"][0] is None and len(layer["tokens"]) == len(ids)
        got = layer["tokens"][1:]
        came = logp[np.arange(len(ids) - 1), ids[1:]]
        np.testing.assert_allclose([t["logprob"] for t in got], came, atol=2e-4)
        np.testing.assert_allclose([t["entropy"] for t in got], -(np.exp(logp) * logp).sum(axis=1), atol=2e-4)
        kl = (np.exp(final) * (final - logp)).sum(axis=1)
        np.testing.assert_allclose([t["kl_to_final"] for t in got], kl, atol=2e-4, rtol=1e-4)
        for t, r, i in zip(got, logp, ids[1:], strict=True):  # float32 against float64: near-ties may swap
            assert 1 + int((r > r[i] + 1e-4).sum()) <= t["rank"] <= 1 + int((r > r[i] - 1e-4).sum())
            top = [a["id"] for a in t["top_logprobs"]]
            np.testing.assert_allclose(r[top], np.sort(r)[::-1][:3], atol=1e-4)
            np.testing.assert_allclose([a["logprob"] for a in t["top_logprobs"]], r[top], atol=2e-4)
        assert layer["sequence"]["mean_kl_to_final"] == pytest.approx(float(kl.mean()), abs=2e-4, rel=1e-4)
    assert answer["layers"][-1]["sequence"]["mean_kl_to_final"] == pytest.approx(0.0, abs=1e-6)
    assert answer["layers"][-1]["sequence"]["top1_agreement"] == 1.0
    kls = [layer["sequence"]["mean_kl_to_final"] for layer in answer["layers"]]
    assert kls[0] > kls[n // 2] > kls[n]


def test_the_last_layer_is_the_records_own_rows(answer: dict[str, Any], service: str) -> None:
    with Client(service, api_key="key-alpha") as lp:
        rows = lp.logprobs(answer["record_id"])
        record = lp.record(answer["record_id"])
    ids = [p["id"] for p in answer["positions"]]
    last = answer["layers"][-1]["tokens"][1:]
    came = rows[np.arange(len(ids) - 1), ids[1:]]
    assert np.abs(np.asarray([t["logprob"] for t in last]) - came).max() <= 1e-6
    assert [t["logprob"] for t in last] == pytest.approx([t.logprob for t in record.tokens[1:]], abs=1e-6)


def test_each_position_says_where_its_final_top_token_settled(answer: dict[str, Any]) -> None:
    """Recomputed from the answer's own top alternatives: the first layer from which on the top token stays the
    final one's."""
    layers = answer["layers"]
    for p, position in enumerate(answer["positions"]):
        if p == 0:
            assert position["settled_layer"] is None
            continue
        top = [layer["tokens"][p]["top_logprobs"][0]["id"] for layer in layers]
        settled = next(i for i in range(len(top)) if all(t == top[-1] for t in top[i:]))
        assert position["settled_layer"] == layers[settled]["layer"]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"layers": [31]}, 422, "invalid_layers", "layers"),
        ({"layers": [3, 3]}, 422, "invalid_layers", "layers"),
        ({"layers": [-1]}, 422, "invalid_request", "layers.0"),
        ({"top_logprobs": 21}, 422, "invalid_request", "top_logprobs"),
        ({"lens": "tuned-nope"}, 404, "head_not_found", "lens"),
    ],
)
def test_bad_lens_requests_say_what_is_wrong(
    alpha: httpx.Client, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    response = alpha.post("/v1/analysis/lens", json={"model": MODEL, "text": TEXT, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


def test_chosen_layers_come_back_in_the_order_asked(alpha: httpx.Client) -> None:
    response = alpha.post("/v1/analysis/lens", json={"model": MODEL, "text": TEXT, "layers": [30, 0, 12]})
    assert response.status_code == 200, response.text
    assert [layer["layer"] for layer in response.json()["layers"]] == [30, 0, 12]
