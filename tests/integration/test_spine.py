"""The spine end to end: real HTTP, real Redis, a real worker with the packaged SmolLM2."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import redis
import torch
from safetensors.numpy import load as st_load

from tests.conftest import MODEL
from workers.contract.keys import jobs_stream

TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk. From the top he could see "
    "the fishing boats returning, their lanterns bobbing like fireflies over the dark water. Ünïcödé: naïve café, 東京."
)


def reference_logprobs(hf: tuple[Any, Any], ids: list[int]) -> np.ndarray:
    model, _ = hf
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1).numpy()


def score(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/score", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_gateway_tokenizes_like_transformers(alpha: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    _, tokenizer = hf_smollm2
    body = score(alpha, text=TEXT)
    assert [t["id"] for t in body["tokens"]] == tokenizer(TEXT).input_ids
    assert "".join(t["text"] for t in body["tokens"]) == TEXT


def test_score_matches_transformers(alpha: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    body = score(alpha, text=TEXT, top_logprobs=20)
    ids = [t["id"] for t in body["tokens"]]
    ref = reference_logprobs(hf_smollm2, ids)
    first = body["tokens"][0]
    assert first["logprob"] is None and first["rank"] is None and first["top_logprobs"] is None
    for t, token in enumerate(body["tokens"][1:], start=1):
        row = ref[t - 1]
        assert abs(token["logprob"] - row[ids[t]]) <= 1e-3
        assert token["rank"] == 1 + int((row > row[ids[t]] + 1e-6).sum())
        assert token["entropy"] == pytest.approx(-(np.exp(row) * row).sum(), abs=1e-3)
        top = token["top_logprobs"]
        assert len(top) == 20
        assert [a["logprob"] for a in top] == pytest.approx(np.sort(row)[::-1][:20], abs=1e-3)


def test_full_rows_rebuild_exactly(alpha: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    body = score(alpha, text=TEXT)
    ids = [t["id"] for t in body["tokens"]]
    response = alpha.get(f"/v1/records/{body['record_id']}/logprobs", params={"start": 1, "stop": len(ids)})
    assert response.status_code == 200, response.text
    rows = st_load(response.content)["logprobs"]
    assert rows.dtype == np.float32 and rows.shape == (len(ids) - 1, 49152)
    lse = np.log(np.exp(rows.astype(np.float64)).sum(axis=1))
    assert np.abs(lse).max() <= 1e-4
    assert np.abs(rows - reference_logprobs(hf_smollm2, ids)[:-1]).max() <= 1e-3
    # position t is the distribution that predicted token t, as in the per-token fields
    for t in (1, 7, len(ids) - 1):
        assert rows[t - 1, ids[t]] == pytest.approx(body["tokens"][t]["logprob"], abs=1e-5)
    window = alpha.get(f"/v1/records/{body['record_id']}/logprobs", params={"start": 5, "stop": 9})
    assert np.array_equal(st_load(window.content)["logprobs"], rows[4:8])


def test_greedy_chat_generation_says_paris(alpha: httpx.Client) -> None:
    response = alpha.post(
        "/v1/generate",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0,
            "max_tokens": 24,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "Paris" in body["text"]
    assert body["finish_reason"] in ("stop", "length")
    assert len(body["tokens"]) == body["usage"]["completion_tokens"]
    assert all(t["logprob"] is not None and t["rank"] >= 1 for t in body["tokens"])
    assert body["tokens"][0]["rank"] == 1  # greedy picks the top token (the record is rescored in one pass)
    record = alpha.get(f"/v1/records/{body['record_id']}").json()
    assert record["kind"] == "generate"
    assert record["n_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert record["n_prompt"] == body["usage"]["prompt_tokens"]
    assert record["tokens"][record["n_prompt"] :] == body["tokens"]


def test_seeded_sampling_is_reproducible(alpha: httpx.Client) -> None:
    request = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 1234,
        "max_tokens": 12,
    }
    first = alpha.post("/v1/generate", json=request).json()
    second = alpha.post("/v1/generate", json=request).json()
    assert first["text"] == second["text"] and first["record_id"] == second["record_id"]
    third = alpha.post("/v1/generate", json={**request, "seed": 99}).json()
    assert [t["id"] for t in third["tokens"]] != [t["id"] for t in first["tokens"]]


def test_stop_strings_end_the_completion(alpha: httpx.Client) -> None:
    body = alpha.post(
        "/v1/generate",
        json={"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "temperature": 0, "max_tokens": 30, "stop": [" 8"]},
    ).json()
    assert body["finish_reason"] == "stop"
    assert " 8" not in body["text"] and body["text"].startswith(" 6, 7,")


def test_repeat_request_is_cached_without_a_job(alpha: httpx.Client, redis_client: redis.Redis) -> None:
    text = "A repeated request is answered from the cache."
    first = score(alpha, text=text)
    last_job = redis_client.xinfo_stream(jobs_stream(MODEL))["last-generated-id"]  # moves with every job added
    second = score(alpha, text=text)
    assert first["cached"] is False and second["cached"] is True
    assert second["record_id"] == first["record_id"] and second["tokens"] == first["tokens"]
    assert redis_client.xinfo_stream(jobs_stream(MODEL))["last-generated-id"] == last_job


def test_chat_scoring_uses_the_chat_template(alpha: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    _, tokenizer = hf_smollm2
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
    ]
    body = score(alpha, messages=messages)
    expected = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert [t["id"] for t in body["tokens"]] == list(expected)


def test_tenants_cannot_read_each_other(alpha: httpx.Client, beta: httpx.Client) -> None:
    text = "Only the alpha tenant may read this record."
    rid = score(alpha, text=text)["record_id"]
    for path in (f"/v1/records/{rid}", f"/v1/records/{rid}/logprobs"):
        response = beta.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "record_not_found"
    beta_body = score(beta, text=text)
    assert beta_body["cached"] is False and beta_body["record_id"] != rid  # ids are derived per tenant


def test_api_key_required(service: str) -> None:
    assert httpx.get(f"{service}/healthz").status_code == 200
    response = httpx.post(f"{service}/v1/score", json={"model": MODEL, "text": "x"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.post(
        f"{service}/v1/score", json={"model": MODEL, "text": "x"}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/score", {"model": "no-such-model", "text": "x"}, 404, "model_not_found"),
        ("/v1/score", {"model": MODEL, "text": ""}, 422, "empty_text"),
        ("/v1/score", {"model": MODEL}, 422, "missing_input"),
        (
            "/v1/score",
            {"model": MODEL, "text": "a", "messages": [{"role": "user", "content": "b"}]},
            422,
            "missing_input",
        ),
        ("/v1/score", {"model": MODEL, "text": "word " * 9000}, 422, "context_length_exceeded"),
        ("/v1/score", {"model": MODEL, "text": "x", "top_logprobs": 21}, 422, "top_logprobs_too_large"),
        ("/v1/score", {"model": MODEL, "text": "x", "unknown_field": 1}, 422, "invalid_request"),
        ("/v1/generate", {"model": MODEL, "prompt": "x", "max_tokens": 100000}, 422, "max_tokens_too_large"),
        ("/v1/generate", {"model": MODEL, "prompt": "x", "temperature": -1}, 422, "invalid_request"),
        ("/v1/generate", {"model": MODEL, "prompt": "x", "stop": [""]}, 422, "invalid_stop"),
    ],
)
def test_bad_input_gets_a_clear_error(
    alpha: httpx.Client, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    response = alpha.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_malformed_json_and_missing_records(alpha: httpx.Client) -> None:
    response = alpha.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed_json"
    assert alpha.get("/v1/records/0123456789abcdef0123456789abcdef").status_code == 404
    rid = score(alpha, text="Two short words.")["record_id"]
    bad = alpha.get(f"/v1/records/{rid}/logprobs", params={"start": 3, "stop": 2})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_positions"


def test_models_health_and_readiness(alpha: httpx.Client) -> None:
    models = alpha.get("/v1/models").json()["data"]
    smol = next(m for m in models if m["id"] == MODEL)
    assert smol["ready"] and smol["workers"] >= 1 and smol["backend"] == "hf"
    assert smol["storage"] == "hidden" and smol["hidden_dtype"] == "float32"
    assert smol["rebuild_max_abs_error"] <= 1e-3
    assert (smol["vocab_size"], smol["hidden_size"]) == (49152, 576)
    assert alpha.get("/readyz").json() == {"ready": True, "redis": True, "storage_full": False, "workers": {MODEL: 1}}
    assert alpha.get("/healthz").json() == {"status": "ok"}
    assert alpha.get("/v1/models", headers={"X-Request-Id": "abc"}).headers["X-Request-Id"] == "abc"


def test_a_long_text_crosses_every_chunk_boundary(alpha: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    """Over 2,048 tokens: the prefill goes in chunks through the KV cache and the unembedding in several
    matmuls; the statistics still match transformers' single forward pass."""
    from bench.texts import text_of_tokens

    _, tokenizer = hf_smollm2
    text = text_of_tokens(2300, lambda t: tokenizer(t).input_ids)
    body = score(alpha, text=text, top_logprobs=1)
    ids = [t["id"] for t in body["tokens"]]
    assert len(ids) > 2048
    ref = reference_logprobs(hf_smollm2, ids)
    got = np.array([t["logprob"] for t in body["tokens"][1:]])
    assert np.abs(got - ref[np.arange(len(ids) - 1), ids[1:]]).max() <= 1e-3
    ranks = np.array([t["rank"] for t in body["tokens"][1:]])
    assert (ranks == 1).mean() > 0.5  # a repetitive text: mostly predicted
