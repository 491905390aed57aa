"""POST /v1/analysis/consistency (#31) end to end on the packaged SmolLM2: seeded samples repeat and each equals
/v1/generate with its seed; the log-likelihoods are the records' own; the methods are LM-Polygraph's over the
returned samples and matrix; entailment and P(True) equal transformers' own next-token probabilities in float64;
hidden similarity is the cosine of the records' mean final states; bad input is a 422 naming its field."""

from __future__ import annotations

import math
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from app.analysis.samples import SampleSet
from app.analysis.similarity import rouge_l_matrix
from app.serving.consistency import JUDGE, P_TRUE
from logprobe.client import Client
from logprobe.schemas.consistency import ConsistencyResponse
from tests.conftest import MODEL
from tests.unit.test_consistency_methods import theirs

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Name a colour of the sky. One word."}]
REQUEST: dict[str, Any] = {"model": MODEL, "messages": QUESTION, "n": 4, "max_tokens": 8, "seed": 11}


def post(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/analysis/consistency", json=body)


@pytest.fixture(scope="module")
def answer(service: str) -> dict[str, Any]:
    with httpx.Client(base_url=service, headers={"Authorization": "Bearer key-alpha"}, timeout=600) as alpha:
        response = post(alpha, **REQUEST)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_seeded_samples_repeat_and_each_is_the_generation_of_its_seed(
    answer: dict[str, Any], alpha: httpx.Client
) -> None:
    again = post(alpha, **REQUEST).json()
    assert [s["text"] for s in again["samples"]] == [s["text"] for s in answer["samples"]]
    assert again["sequence"] == answer["sequence"] and again["similarity"] == answer["similarity"]
    samples = answer["samples"]
    assert [s["index"] for s in samples] == [0, 1, 2, 3] and [s["seed"] for s in samples] == [11, 12, 13, 14]
    assert all(s["error"] is None and s["record_id"] for s in samples)
    for s in samples:
        alone = alpha.post(
            "/v1/generate", json={"model": MODEL, "messages": QUESTION, "max_tokens": 8, "seed": s["seed"]}
        ).json()
        assert alone["text"] == s["text"] and len(alone["tokens"]) == s["n_tokens"]
        assert s["log_likelihood"] == pytest.approx(sum(t["logprob"] for t in alone["tokens"]), abs=1e-5)
    greedy = alpha.post(
        "/v1/generate", json={"model": MODEL, "messages": QUESTION, "max_tokens": 8, "temperature": 0.0}
    ).json()
    assert answer["answer"]["greedy"] and answer["answer"]["text"] == greedy["text"]
    assert answer["answer"]["record_id"] == greedy["record_id"]


def answer_tokens(alpha: httpx.Client, record_id: str) -> tuple[list[int], list[dict[str, Any]]]:
    """A record's token ids and the rows of its answer (the tokens after its prompt)."""
    record = alpha.get(f"/v1/records/{record_id}").json()
    return [t["id"] for t in record["tokens"]], record["tokens"][record["n_prompt"] :]


def test_the_methods_are_lm_polygraphs_over_the_returned_samples(answer: dict[str, Any], alpha: httpx.Client) -> None:
    texts = [s["text"] for s in answer["samples"]]
    matrix = np.array(answer["similarity"])
    np.testing.assert_allclose(matrix, rouge_l_matrix(texts), atol=1e-12)  # lexical, the default
    judged = answer["answer"]
    _, rows = answer_tokens(alpha, judged["record_id"])
    assert judged["log_likelihood"] == pytest.approx(sum(t["logprob"] for t in rows), abs=1e-5)
    assert judged["p_true"] is not None and 0 < judged["p_true"] < 1
    samples = SampleSet(
        texts=texts,
        log_likelihoods=np.array([s["log_likelihood"] for s in answer["samples"]]),
        similarity=matrix,
        lexical=rouge_l_matrix(texts),
        answer_similarity=np.array(judged["similarity"]),
        answer_logprobs=np.array([t["logprob"] for t in rows]),
        answer_entropies=np.array([t["entropy"] for t in rows]),
        p_true_logprob=math.log(judged["p_true"]),
    )
    want = theirs(samples)
    assert set(answer["sequence"]) == set(answer["methods"]) == set(want)
    for name, value in want.items():
        assert answer["sequence"][name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    np.testing.assert_allclose(judged["similarity"], rouge_l_matrix([judged["text"], *texts])[0, 1:], atol=1e-12)


def next_logprobs(model: Any, ids: list[int]) -> np.ndarray:
    """transformers' own log-distribution of the token after `ids`, in float64."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    return torch.log_softmax(logits, dim=-1).numpy()


def test_entailment_and_p_true_are_the_models_own_probabilities(
    alpha: httpx.Client, hf_smollm2: tuple[Any, Any]
) -> None:
    given = f"Blue ({uuid.uuid4().hex[:4]})."
    body = {**REQUEST, "n": 2, "max_tokens": 4, "answer": given, "similarity": "entailment"}
    response = post(alpha, **body)
    assert response.status_code == 200, response.text
    got = response.json()
    model, tokenizer = hf_smollm2
    yes, no = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Yes", " No"))
    texts = [given, *(s["text"] for s in got["samples"])]
    full = np.eye(3)
    for i, a in enumerate(texts):
        for j, b in enumerate(texts):
            if a != b:
                logp = next_logprobs(model, tokenizer(JUDGE.format(premise=a, hypothesis=b))["input_ids"])
                full[i, j] = 1 / (1 + math.exp(logp[no] - logp[yes]))
    np.testing.assert_allclose(got["similarity"], full[1:, 1:], atol=1e-4)
    np.testing.assert_allclose(got["answer"]["similarity"], (full[0, 1:] + full[1:, 0]) / 2, atol=1e-4)
    assert got["answer"]["greedy"] is False and got["answer"]["text"] == given
    true = tokenizer("True", add_special_tokens=False)["input_ids"][0]
    prompt = P_TRUE.format(q=QUESTION[0]["content"], a=given)
    p_true = math.exp(next_logprobs(model, tokenizer(prompt)["input_ids"])[true])
    assert got["answer"]["p_true"] == pytest.approx(p_true, rel=1e-3)


def test_hidden_similarity_is_the_cosine_of_the_records_mean_final_states(
    alpha: httpx.Client, hf_smollm2: tuple[Any, Any]
) -> None:
    response = post(alpha, **{**REQUEST, "n": 2, "seed": 5, "similarity": "hidden", "methods": ["degree_matrix"]})
    assert response.status_code == 200, response.text
    got = response.json()
    model, _ = hf_smollm2
    means = []
    for record_id in [got["answer"]["record_id"], *(s["record_id"] for s in got["samples"])]:
        ids, rows = answer_tokens(alpha, record_id)
        with torch.inference_mode():
            states = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0].double().numpy()
        means.append(states[len(ids) - len(rows) - 1 : len(ids) - 1].mean(axis=0))  # the rows that predicted it
    unit = np.array(means) / np.linalg.norm(means, axis=1, keepdims=True)
    cosine = np.clip(unit @ unit.T, 0, 1)
    np.testing.assert_allclose(got["similarity"], cosine[1:, 1:], atol=1e-4)
    np.testing.assert_allclose(got["answer"]["similarity"], cosine[0, 1:], atol=1e-4)
    assert got["methods"] == ["degree_matrix"] and list(got["sequence"]) == ["degree_matrix"]


def test_bad_requests_say_what_is_wrong(alpha: httpx.Client) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"n": 1}, "n", "invalid_request"),
        ({"n": 21}, "n", "invalid_request"),
        ({"similarity": "cosine"}, "similarity", "invalid_request"),
        ({"methods": ["semantic_entropy", "perplexity"]}, "methods", "unknown_method"),
        ({"messages": None}, "prompt", "missing_input"),
        ({"max_tokens": 257}, "max_tokens", "invalid_request"),
        ({"answer": ""}, "answer", "invalid_request"),
    ]
    for change, param, code in cases:
        response = post(alpha, **{**REQUEST, **change})
        assert response.status_code == 422, (change, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["code"] == code, (change, error)


def test_methods_are_listed_with_their_papers(alpha: httpx.Client) -> None:
    listed = {m["name"]: m for m in alpha.get("/v1/analysis/methods").json() if "consistency" in m["families"]}
    assert set(listed) == {
        "semantic_entropy",
        "semantic_entropy_discrete",
        "num_semantic_sets",
        "eigval_laplacian",
        "degree_matrix",
        "eccentricity",
        "lexical_similarity",
        "cocoa_msp",
        "cocoa_ppl",
        "cocoa_mte",
        "p_true",
    }
    assert "2302.09664" in listed["semantic_entropy"]["paper"] and "2207.05221" in listed["p_true"]["paper"]


def test_the_python_client_asks_for_it(service: str) -> None:
    with Client(service, api_key="key-alpha") as client:
        got = client.consistency(
            MODEL, messages=QUESTION, n=2, max_tokens=4, seed=3, temperature=0.7, methods=["lexical_similarity"]
        )
    assert isinstance(got, ConsistencyResponse) and [s.seed for s in got.samples] == [3, 4]
    texts = [s.text or "" for s in got.samples]
    assert got.sequence["lexical_similarity"] == pytest.approx(-rouge_l_matrix(texts)[0, 1], abs=1e-12)
