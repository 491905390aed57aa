"""The tuned lens end to end (issue #32; Belrose et al. 2023): a `lens` head trained on a few plot summaries by a
real worker serving SmolLM2 (and a tiny random Llama for a head of another model). On held-out text its KL to the
final layer is below the logit lens's at every layer (the paper's result), in the head's metrics and in
POST /v1/analysis/lens, whose tuned readings equal a float64 computation from transformers' own model and the stored
translators. The head lives as other heads do (listed, fetched, counted in its tenant's bytes, a deadline not a TTL,
deleted), and another tenant never sees it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import torch
from safetensors.numpy import load as st_load

from app.launcher.local_service import LocalService
from app.serving import corpus
from tests.conftest import ARTIFACTS, MODEL, service_env
from workers.contract.keys import head_key
from workers.contract.lifetimes import expiry_key
from workers.contract.usage import object_usage_key

pytestmark = pytest.mark.slow

N_LAYERS = 30  # SmolLM2-135M
TRAIN = {"steps": 8, "batch_positions": 16, "val_fraction": 0.25, "max_positions": 64}  # about a minute on 2 cores
HELD_OUT = " ".join(corpus.plots()[20].split()[:50])  # a plot summary the lens was not trained on


@pytest.fixture(scope="module")
def lens_service(tiny_models: dict[str, str]) -> Iterator[LocalService]:
    models = [MODEL, {"name": "tiny-llama", "source": "hf", "path": tiny_models["tiny-llama"]}]
    with LocalService(env=service_env(models), log_dir=ARTIFACTS / "tuned-lens") as service:
        yield service


@pytest.fixture(scope="module")
def clients(lens_service: LocalService) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    url = lens_service.base_url
    with (
        httpx.Client(base_url=url, headers={"Authorization": "Bearer key-alpha"}, timeout=300) as a,
        httpx.Client(base_url=url, headers={"Authorization": "Bearer key-beta"}, timeout=300) as b,
    ):
        yield a, b


def wait_head(client: httpx.Client, head_id: str, timeout_s: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        head = client.get(f"/v1/heads/{head_id}").json()
        assert 0.0 <= head["progress"] <= 1.0
        if head["status"] in ("succeeded", "failed"):
            return head  # type: ignore[no-any-return]
        time.sleep(0.5)
    raise TimeoutError(head_id)


def train_lens(client: httpx.Client, model: str, **params: Any) -> dict[str, Any]:
    texts = [{"text": " ".join(plot.split()[:50])} for plot in corpus.plots()[:8]]
    body = {"model": model, "name": "tuned", "kind": "lens", "examples": texts, "seed": 0, "params": params}
    response = client.post("/v1/heads", json=body)
    assert response.status_code == 202, response.text
    head = wait_head(client, response.json()["id"])
    assert head["status"] == "succeeded", head
    return head


@pytest.fixture(scope="module")
def lens_head(clients: tuple[httpx.Client, httpx.Client]) -> dict[str, Any]:
    return train_lens(clients[0], MODEL, **TRAIN)


def test_the_trained_lens_beats_the_logit_lens_on_held_out_text_at_every_layer(lens_head: dict[str, Any]) -> None:
    assert lens_head["kind"] == "lens" and lens_head["examples"] == {"texts": 8}
    metrics = lens_head["metrics"]
    assert (metrics["train_texts"], metrics["held_out_texts"], metrics["steps"]) == (6, 2, 8)
    assert metrics["held_out_positions"] > 50 and metrics["train_positions"] > 200
    tuned = {int(k): v for k, v in metrics["kl_tuned"].items()}
    logit = {int(k): v for k, v in metrics["kl_logit"].items()}
    assert sorted(tuned) == sorted(logit) == list(range(N_LAYERS))  # every layer below the last
    for layer in range(N_LAYERS):
        assert tuned[layer] < logit[layer], (layer, tuned[layer], logit[layer])
    assert metrics["layers_improved"] == N_LAYERS
    assert metrics["mean_kl_tuned"] == pytest.approx(float(np.mean(list(tuned.values()))))
    # one d x d affine map per layer, as the package's translators
    assert lens_head["n_parameters"] == N_LAYERS * (576 * 576 + 576)


def test_the_lens_analysis_reads_through_the_trained_translators(
    clients: tuple[httpx.Client, httpx.Client],
    lens_head: dict[str, Any],
    lens_service: LocalService,
    hf_smollm2: tuple[Any, Any],
) -> None:
    alpha, _ = clients
    asked = {"model": MODEL, "text": HELD_OUT, "layers": [0, 7, 15, 29, 30], "top_logprobs": 2}
    tuned = alpha.post("/v1/analysis/lens", json={**asked, "lens": lens_head["id"]})
    logit = alpha.post("/v1/analysis/lens", json=asked)
    assert tuned.status_code == logit.status_code == 200, tuned.text
    t, g = tuned.json(), logit.json()
    assert t["lens"] == lens_head["id"] and g["lens"] == "logit" and t["record_id"] == g["record_id"]
    for tl, gl in zip(t["layers"][:-1], g["layers"][:-1], strict=True):  # on text it never saw, too
        assert tl["sequence"]["mean_kl_to_final"] < gl["sequence"]["mean_kl_to_final"], tl["layer"]
    assert t["layers"][-1] == g["layers"][-1]  # the final layer has no translator

    # independently: transformers' states, the stored float16 translators, the final norm and unembedding, float64
    with redis.Redis.from_url(lens_service.redis_url) as store:
        weights = st_load(store.hget(head_key("alpha", lens_head["id"]), "weights"))
    model, _ = hf_smollm2
    ids = [p["id"] for p in t["positions"]]
    with torch.inference_mode():
        states = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        unembed = model.lm_head.weight.double()
        final = torch.log_softmax(states[N_LAYERS][0].double() @ unembed.T, dim=-1)[:-1].numpy()
        for reading in t["layers"][:-1]:
            layer = reading["layer"]
            h = states[layer][0]
            w, b = (torch.from_numpy(weights[k][layer].astype(np.float32)) for k in ("weight", "bias"))
            read = model.model.norm(h + h @ w.T + b).double()
            logp = torch.log_softmax(read @ unembed.T, dim=-1)[:-1].numpy()
            kl = (np.exp(final) * (final - logp)).sum(axis=1)
            got = reading["tokens"][1:]
            np.testing.assert_allclose([x["kl_to_final"] for x in got], kl, atol=2e-3, rtol=1e-3)
            came = logp[np.arange(len(ids) - 1), ids[1:]]
            np.testing.assert_allclose([x["logprob"] for x in got], came, atol=2e-3)


def test_a_lens_head_lives_like_other_heads_and_other_tenants_never_see_it(
    clients: tuple[httpx.Client, httpx.Client], lens_head: dict[str, Any], lens_service: LocalService
) -> None:
    alpha, beta = clients
    head_id = lens_head["id"]
    assert head_id in {h["id"] for h in alpha.get("/v1/heads").json()["data"]}
    assert alpha.get(f"/v1/heads/{head_id}").json()["metrics"] == lens_head["metrics"]
    with redis.Redis.from_url(lens_service.redis_url) as store:
        key = head_key("alpha", head_id)
        stored = store.hstrlen(key, "weights") + store.hstrlen(key, "state")
        assert store.hstrlen(key, "weights") > 2 * N_LAYERS * 576 * 576  # float16 translators
        assert int(store.hget(object_usage_key("alpha"), key) or 0) == stored  # counted against the tenant
        assert store.ttl(key) == -1 and store.zscore(expiry_key(key), key) == lens_head["expires_at"]

    text = {"model": MODEL, "text": HELD_OUT, "layers": [3]}
    assert beta.get(f"/v1/heads/{head_id}").status_code == 404
    assert head_id not in {h["id"] for h in beta.get("/v1/heads").json()["data"]}
    response = beta.post("/v1/analysis/lens", json={**text, "lens": head_id})
    assert response.status_code == 404
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("head_not_found", "lens")

    # a tuned lens of another model: 422; used as a detector: 422
    tiny = train_lens(alpha, "tiny-llama", steps=2, batch_positions=8)
    assert tiny["metrics"]["layers_improved"] >= 0 and tiny["n_parameters"] == 2 * (64 * 64 + 64)
    response = alpha.post("/v1/analysis/lens", json={**text, "lens": tiny["id"]})
    assert response.status_code == 422
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("head_model_mismatch", "lens")
    response = alpha.post("/v1/analysis/detect", json={"model": "tiny-llama", "text": HELD_OUT, "heads": [tiny["id"]]})
    assert response.status_code == 422 and response.json()["error"]["code"] == "head_kind_mismatch", response.text

    assert alpha.delete(f"/v1/heads/{tiny['id']}").status_code == 204
    response = alpha.post("/v1/analysis/lens", json={**text, "model": "tiny-llama", "layers": [1], "lens": tiny["id"]})
    assert response.status_code == 404 and response.json()["error"]["code"] == "head_not_found"


def test_bad_lens_heads_are_refused_with_their_codes(clients: tuple[httpx.Client, httpx.Client]) -> None:
    alpha, _ = clients
    one = {"model": MODEL, "name": "tuned", "kind": "lens", "examples": [{"text": "only one text here"}]}
    response = alpha.post("/v1/heads", json=one)
    assert response.status_code == 422 and response.json()["error"]["code"] == "too_few_examples"
    two = {**one, "examples": [{"text": "a first text"}, {"text": "a second text"}]}
    for params, needle in (({"optimizer": "lbfgs"}, "optimizer"), ({"momentum": 1.5}, "momentum"), ({"folds": 3}, "")):
        response = alpha.post("/v1/heads", json={**two, "params": params})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_params", "params") and needle in error["message"]
