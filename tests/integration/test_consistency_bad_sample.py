"""A bad sample of /v1/analysis/consistency fails alone, end to end (#31): a real model whose weights break on some
tokens — a tiny random Llama (SmolLM2's tokenizer) whose numbers overflow on half the vocabulary, as a damaged
checkpoint's would — served by a real worker. A sample that draws such a token first has NaN logits at its next step:
its sampling fails in the worker, that sample alone gets the error, and the methods run on the others. Which samples
draw one is known in advance: each sample's first token is /v1/generate's with the sample's seed (the prompt's own
tokens and the judged answer's are kept sound, so those steps are). The load-time rebuild check reads broken tokens
too: its NaN error sends the model to full-row storage, as any failed check does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from app.analysis.similarity import rouge_l_matrix
from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL, SMALL, _save_with_smollm2_tokenizer, service_env

pytestmark = pytest.mark.slow

NAME = "tiny-broken"
PROMPT = "Question: What colour is the sky?\nAnswer:"
ANSWER = " Blue"
N = 6


def protected_ids() -> set[int]:
    """The tokens the prompt and the judged answer are made of, and the special ones: kept sound."""
    from transformers import AutoTokenizer

    from workers.config import PACKAGED_MODELS
    from workers.models import safetensors_dir

    folder, _ = safetensors_dir(PACKAGED_MODELS[MODEL], DATA_DIR)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = set(tokenizer(PROMPT)["input_ids"]) | set(tokenizer(ANSWER, add_special_tokens=False)["input_ids"])
    return ids | set(tokenizer.all_special_ids)


def broken(token: int, kept: set[int]) -> bool:
    return token % 2 == 1 and token not in kept


def break_tokens(model: Any, bad: Any, dim: int = 0) -> None:
    """Tokens `bad` carry 10 in the residual dimension `dim`, which no other token and no layer writes; the last
    layer's MLP multiplies it by 3e38, so a bad token's own final state, and the logits it predicts, are not finite.
    Only its own position: attention reads finite keys and values from it, so other positions stay sound."""
    with torch.no_grad():
        embeddings = model.model.embed_tokens.weight
        embeddings[:, dim] = 0.0
        embeddings[bad, dim] = 10.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[dim, :] = 0.0
            layer.mlp.down_proj.weight[dim, :] = 0.0
        model.model.layers[-1].mlp.up_proj.weight[0, dim] = 3e38


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, set[int]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(**SMALL))  # untied: the unembedding stays sound, every token can be drawn
    kept = protected_ids()
    break_tokens(model, torch.tensor([t for t in range(SMALL["vocab_size"]) if broken(t, kept)]))
    folder = tmp_path_factory.mktemp("broken") / "llama"
    return _save_with_smollm2_tokenizer(Path(folder), model), kept


@pytest.fixture(scope="module")
def client(broken_model: tuple[str, set[int]]) -> Iterator[httpx.Client]:
    spec = {"name": NAME, "source": "hf", "path": broken_model[0]}
    with (
        LocalService(env=service_env([spec], keys=False), log_dir=ARTIFACTS / "bad-sample") as local,
        httpx.Client(base_url=local.base_url, timeout=600) as http,
    ):
        yield http


def first_token(client: httpx.Client, seed: int) -> int:
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 1, "temperature": 1.0, "seed": seed}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["tokens"][-1]["id"])


def test_a_sample_whose_generation_fails_is_reported_and_the_others_answer(
    client: httpx.Client, broken_model: tuple[str, set[int]]
) -> None:
    _, kept = broken_model
    firsts = [first_token(client, seed) for seed in range(N + 24)]
    # a seed whose N samples include both kinds, at least 2 sound ones (the methods need 2)
    seed = next(s for s in range(25) if 2 <= sum(not broken(t, kept) for t in firsts[s : s + N]) < N)
    expected_bad = [broken(t, kept) for t in firsts[seed : seed + N]]
    body = {
        "model": NAME,
        "prompt": PROMPT,
        "answer": ANSWER,
        "n": N,
        "max_tokens": 2,
        "temperature": 1.0,
        "seed": seed,
        "methods": ["lexical_similarity", "num_semantic_sets", "degree_matrix"],
    }
    card = next(m for m in client.get("/v1/models").json()["data"] if m["id"] == NAME)
    assert card["storage"] == "rows" and card["rebuild_max_abs_error"] == 0.0  # its NaNs failed the load-time check
    response = client.post("/v1/analysis/consistency", json=body)
    assert response.status_code == 200, response.text
    got = response.json()
    samples = got["samples"]
    assert [s["index"] for s in samples] == list(range(N)) and [s["seed"] for s in samples] == list(
        range(seed, seed + N)
    )
    assert [s["error"] is not None for s in samples] == expected_bad
    for s in samples:
        if s["error"] is not None:
            assert s["error"]["code"] == "worker_error" and s["record_id"] is None and s["text"] is None
        else:
            assert s["record_id"] and s["n_tokens"] >= 1 and np.isfinite(s["log_likelihood"])
    good = [s["text"] for s in samples if s["error"] is None]
    matrix = np.array(got["similarity"])
    assert matrix.shape == (len(good), len(good))
    np.testing.assert_allclose(matrix, rouge_l_matrix(good), atol=1e-12)  # the methods ran on the others
    off_diagonal = matrix[~np.eye(len(good), dtype=bool)]
    assert got["sequence"]["lexical_similarity"] == pytest.approx(-off_diagonal.mean(), abs=1e-9)
    assert len(got["answer"]["similarity"]) == len(good) and got["answer"]["text"] == ANSWER

    again = client.post("/v1/analysis/consistency", json=body).json()  # the same samples fail again: seeded
    assert [s["error"] is not None for s in again["samples"]] == expected_bad
    assert client.get("/readyz").status_code == 200  # the worker lives on
    assert client.post("/v1/generate", json={"model": NAME, "prompt": PROMPT, "max_tokens": 1}).status_code == 200
