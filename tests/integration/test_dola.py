"""The `dola` preset through the real service on both packaged models: greedy DoLa, streamed, equals
transformers' own DoLa decoding (core `generate(dola_layers=...)` of transformers 4.55.4, recorded by
tests/data/dola/make_reference.py) token for token, for the "low" and "high" candidate buckets and a list of
layers; bad layers are refused with their param. The same service checks the logit lens on Gemma."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL, service_env
from workers.dola import candidate_layers

GEMMA = "gemma-3-270m"
N_LAYERS, TIED = {MODEL: 30, GEMMA: 18}, {MODEL: True, GEMMA: True}  # both tie their output head to the embeddings
REFERENCE = json.loads((Path(__file__).parents[1] / "data" / "dola" / "reference.json").read_text())


@pytest.fixture(scope="module")
def service() -> Iterator[httpx.Client]:
    with (
        LocalService(env=service_env([MODEL, GEMMA], keys=False), log_dir=ARTIFACTS / "dola") as local,
        httpx.Client(base_url=local.base_url, timeout=600) as client,
    ):
        yield client


def streamed(client: httpx.Client, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The steps of a streamed decoding, and its summary."""
    steps, done, event = [], None, None
    with client.stream("POST", "/v1/decode/contrastive", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                assert event in ("step", "done"), data
                if event == "step":
                    steps.append(data)
                else:
                    done = data
    assert done is not None
    return steps, done


@pytest.mark.parametrize("run", REFERENCE["runs"], ids=lambda r: f"{r['model']}-{r['layers']}-{r['prompt'][:8]}")
def test_greedy_dola_equals_transformers(service: httpx.Client, run: dict[str, Any]) -> None:
    body = {
        "prompt": run["prompt"],
        "preset": {"name": "dola", "model": run["model"], "layers": run["layers"], "template": "raw"},
        "max_tokens": REFERENCE["max_new_tokens"],
        "temperature": 0.0,
        "top_logprobs": 3,
    }
    steps, done = streamed(service, body)
    assert [step["id"] for step in steps] == run["completion"]
    assert done["usage"] == {"prompt_tokens": len(run["prompt_ids"]), "completion_tokens": len(run["completion"])}
    candidates = candidate_layers(run["layers"], N_LAYERS[run["model"]], TIED[run["model"]])
    for step in steps:  # the chosen token is the contrast's best, and a plausible one under the final layer
        assert step["top_logprobs"][0]["id"] == step["id"] and step["logprob"] is not None
        assert step["premature_layer"] in candidates  # the layer DoLa contrasted at this step
    record = service.get(f"/v1/records/{done['record_id']}").json()
    assert record["model"] == run["model"] and record["n_prompt"] == len(run["prompt_ids"])
    assert [token["id"] for token in record["tokens"]] == run["prompt_ids"] + run["completion"]


@pytest.mark.parametrize(
    ("preset", "status", "code", "param"),
    [
        ({"layers": [30]}, 422, "invalid_layers", "preset.layers"),
        ({"layers": [4, 4]}, 422, "invalid_layers", "preset.layers"),
        ({"layers": []}, 422, "invalid_layers", "preset.layers"),
        ({"layers": "middle"}, 422, None, None),
        ({"layers": [-1]}, 422, None, None),
        ({"model": None}, 422, "invalid_preset", "preset.model"),
    ],
)
def test_bad_dola_presets(
    service: httpx.Client, preset: dict[str, Any], status: int, code: str | None, param: str | None
) -> None:
    body = {"prompt": "Hi", "preset": {"name": "dola", "model": MODEL, **preset}, "max_tokens": 2}
    response = service.post("/v1/decode/contrastive", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if code is not None:
        assert (error["code"], error["param"]) == (code, param)


def test_the_logit_lens_on_gemma_equals_transformers(service: httpx.Client) -> None:
    """The lens on the second packaged model (#32: both models; test_lens.py checks SmolLM2 the same way), here
    because this service already serves Gemma: every layer's logprob of the token that came and its KL to the final
    layer equal transformers' Gemma read through its final norm (the last layer as it is) in float64."""
    from transformers import AutoModelForCausalLM

    from tests.integration.test_lens import reference
    from workers.config import PACKAGED_MODELS
    from workers.models import safetensors_dir

    response = service.post("/v1/analysis/lens", json={"model": GEMMA, "text": "The Eiffel Tower is in Paris, France"})
    assert response.status_code == 200, response.text
    answer = response.json()
    folder, _ = safetensors_dir(PACKAGED_MODELS[GEMMA], DATA_DIR)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = [p["id"] for p in answer["positions"]]
    rows = reference(model, ids)
    n = N_LAYERS[GEMMA]
    assert answer["n_layers"] == n and [layer["layer"] for layer in answer["layers"]] == list(range(n + 1))
    final = rows[n][:-1]
    for layer in answer["layers"]:
        logp = rows[layer["layer"]][:-1]  # row i predicts token i + 1
        got = layer["tokens"][1:]
        came = logp[np.arange(len(ids) - 1), ids[1:]]  # near -1000 at the embeddings: float32 keeps ~1e-4 there
        np.testing.assert_allclose([t["logprob"] for t in got], came, atol=1e-4, rtol=1e-6)
        kl = (np.exp(final) * (final - logp)).sum(axis=1)
        np.testing.assert_allclose([t["kl_to_final"] for t in got], kl, atol=1e-4, rtol=1e-4)
