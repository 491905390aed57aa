"""Membership methods and chat spans end to end, through HTTP, against float64 references computed here from
transformers' own SmolLM2 (its logits and its tokenizer's chat template), independently of the service."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import MODEL

TEXT = (
    "The river froze early that year, and the ferry stopped running before the first snow. The ferry "
    "keeper mended the nets, and the river kept its silence until the spring."
)
CORPUS = [
    "The ferry crossed the river twice a day.",
    "Snow fell on the river and on the town, and the nets froze.",
    "In the spring the keeper painted the ferry.",
]
TOL = 1e-4  # the worker's statistics are float32; the references are float64 from the same float32 logits


def post(client: httpx.Client, family: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/analysis/{family}", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def reference_rows(model: Any, ids: list[int]) -> np.ndarray:
    """float64 log-probabilities of positions 1..T-1 (row t-1 predicted token t)."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, -1).numpy()[:-1]


def lowest_mean(values: np.ndarray, k: float) -> float:
    n = max(1, int(len(values) * k))
    return float(np.sort(values)[:n].mean())


@pytest.mark.parametrize(("k", "a"), [(0.2, 0.01), (0.5, 2.0)])
def test_membership_matches_float64_references(
    alpha: httpx.Client, hf_smollm2: tuple[Any, Any], k: float, a: float
) -> None:
    model, tokenizer = hf_smollm2
    vocab = model.config.vocab_size
    name = f"refs-{uuid.uuid4().hex[:8]}"
    table = alpha.put(f"/v1/frequency-tables/{name}", json={"model": MODEL, "texts": CORPUS})
    counts = np.zeros(vocab, dtype=np.int64)
    for text in CORPUS:
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            counts[token] += 1
    assert table.status_code == 200, table.text
    assert (table.json()["tokens"], table.json()["distinct_tokens"]) == (counts.sum(), np.count_nonzero(counts))
    frequency = (counts + 1) / (counts.sum() + vocab)  # DC-PDD's add-one smoothing

    ids = tokenizer(TEXT).input_ids
    logp = reference_rows(model, ids)
    x = np.array(ids[1:])
    lp = logp[np.arange(len(x)), x]
    p = np.exp(logp)
    mu = (p * logp).sum(axis=1)
    z = (lp - mu) / np.sqrt((p * logp**2).sum(axis=1) - mu**2)
    firsts = [i for i, t in enumerate(x.tolist()) if t not in x[:i].tolist()]
    calibrated = np.exp(lp[firsts]) * np.log(1.0 / frequency[x[firsts]])
    assert len(firsts) < len(x)  # repeated tokens: only first occurrences count
    if a > 1:
        assert (calibrated > a).any() and (calibrated < a).any()  # the cap bites on some tokens, not all

    body = post(
        alpha,
        "membership",
        model=MODEL,
        text=TEXT,
        frequency_table=name,
        params={"min_k": {"k": k}, "min_k_plus_plus": {"k": k}, "dc_pdd": {"a": a}},
    )
    assert [t["id"] for t in body["tokens"]] == x.tolist()
    np.testing.assert_allclose([t["values"]["min_k_zscore"] for t in body["tokens"]], z, rtol=TOL, atol=TOL)
    assert body["sequence"]["min_k"] == pytest.approx(lowest_mean(lp, k), rel=TOL, abs=TOL)
    assert body["sequence"]["min_k_plus_plus"] == pytest.approx(lowest_mean(z, k), rel=TOL, abs=TOL)
    assert body["sequence"]["dc_pdd"] == pytest.approx(np.minimum(calibrated, a).mean(), rel=TOL, abs=1e-7)
    assert body["undefined"] == {}


CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]


def test_last_turn_is_the_reply_the_chat_template_places(alpha: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    model, tokenizer = hf_smollm2
    ids = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    header = tokenizer.apply_chat_template(CHAT[:1], tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ids[: len(header)] == header
    stop = max(i for i, t in enumerate(ids) if t == tokenizer.eos_token_id) + 1  # through <|im_end|>
    logp = reference_rows(model, ids)
    expected = logp[np.arange(len(header) - 1, stop - 1), ids[len(header) : stop]]

    last = post(alpha, "uncertainty", model=MODEL, messages=CHAT, span="last_turn", methods=["logprob"])
    assert [t["position"] for t in last["tokens"]] == list(range(len(header), stop))
    assert "".join(t["text"] for t in last["tokens"]) == CHAT[-1]["content"] + "<|im_end|>"
    np.testing.assert_allclose([t["values"]["logprob"] for t in last["tokens"]], expected, atol=TOL)
    completion = post(alpha, "uncertainty", model=MODEL, messages=CHAT, span="completion", methods=["logprob"])
    assert completion["tokens"] == last["tokens"]
    prompt = post(alpha, "uncertainty", model=MODEL, messages=CHAT, span="prompt", methods=["logprob"])
    assert [t["position"] for t in prompt["tokens"]] == list(range(1, len(header)))


def test_a_reply_scored_as_last_turn_equals_its_generation(alpha: httpx.Client) -> None:
    generated = alpha.post(
        "/v1/generate", json={"model": MODEL, "messages": CHAT[:1], "temperature": 0, "max_tokens": 24}
    ).json()
    assert generated["finish_reason"] == "stop"  # the reply ends with the end-of-turn token
    chat = [CHAT[0], {"role": "assistant", "content": generated["text"]}]
    scored = post(alpha, "uncertainty", model=MODEL, messages=chat, span="last_turn", methods=["logprob", "rank"])
    assert [t["id"] for t in scored["tokens"]] == [t["id"] for t in generated["tokens"]]
    np.testing.assert_allclose(
        [t["values"]["logprob"] for t in scored["tokens"]], [t["logprob"] for t in generated["tokens"]], atol=1e-5
    )
    assert [t["values"]["rank"] for t in scored["tokens"]] == [1] * len(generated["tokens"])  # greedy


@pytest.mark.parametrize(
    ("messages", "span", "code"),
    [
        (CHAT[:1], "last_turn", "invalid_span"),  # ends with the user's turn
        (CHAT[:1], "completion", "invalid_span"),
        ([*CHAT[:1], {"role": "assistant", "content": ""}], "last_turn", None),  # only the end-of-turn token
    ],
)
def test_chat_span_errors(alpha: httpx.Client, messages: list[dict[str, str]], span: str, code: str | None) -> None:
    response = alpha.post("/v1/analysis/uncertainty", json={"model": MODEL, "messages": messages, "span": span})
    if code is None:
        assert response.status_code == 200 and response.json()["n_positions"] == 1, response.text
    else:
        assert response.status_code == 422 and response.json()["error"]["code"] == code
        assert "assistant turn" in response.json()["error"]["message"]
