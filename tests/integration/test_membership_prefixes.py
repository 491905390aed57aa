"""ReCaLL and Con-ReCall through HTTP: the text scored again after a non-member `prefix` (and a `member_prefix`),
checked against the same log-probabilities read through the compare and uncertainty endpoints."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import MODEL
from tests.integration.test_batches import lines, wait_finished

TEXT = "Four score and seven years ago our fathers brought forth on this continent, a new nation."
NON_MEMBER = "The zorbling quantifier of Vesh-7 recalibrated its plum lattice at dawn. "
MEMBER = "We hold these truths to be self-evident, that all men are created equal. "


def post(client: httpx.Client, family: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/analysis/{family}", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def logprobs(client: httpx.Client, record_id: str) -> np.ndarray:
    answer = post(client, "uncertainty", record_id=record_id, methods=["logprob"])
    return np.array([t["values"]["logprob"] for t in answer["tokens"]])


def test_recall_and_con_recall_read_the_text_after_each_prefix(alpha: httpx.Client) -> None:
    answer = post(
        alpha,
        "membership",
        model=MODEL,
        text=TEXT,
        prefix=NON_MEMBER,
        member_prefix=MEMBER,
        params={"con_recall": {"gamma": 0.3}},
    )
    assert {"min_k", "recall", "con_recall"} <= set(answer["sequence"])
    n = answer["n_positions"]
    alone = logprobs(alpha, answer["record_id"])
    assert alone.size == n and answer["sequence"]["min_k"] == pytest.approx(np.sort(alone)[: int(n * 0.2)].mean())
    after = {}
    for name, prefix in (("prefix", NON_MEMBER), ("member_prefix", MEMBER)):
        pair = post(alpha, "compare", model=MODEL, text=TEXT, context=prefix, methods=["confidence_gain"])
        assert pair["reference_record_id"] == answer["record_id"]
        after[name] = logprobs(alpha, pair["record_id"])[-n:].mean()
    ll = alone.mean()
    assert answer["sequence"]["recall"] == pytest.approx(after["prefix"] / ll, rel=1e-5)
    expected = (after["prefix"] - 0.3 * after["member_prefix"]) / ll
    assert answer["sequence"]["con_recall"] == pytest.approx(expected, rel=1e-5)
    assert answer["sequence"]["recall"] != pytest.approx(1.0, abs=1e-3)  # the prefix changed the likelihood


def test_batches_take_the_prefixes(alpha: httpx.Client) -> None:
    analysis = {"family": "membership", "methods": ["recall", "con_recall"], "prefix": NON_MEMBER}
    refused = alpha.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": TEXT}], "analyses": [analysis]})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "member_prefix"
    analysis["member_prefix"] = MEMBER
    batch = alpha.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": TEXT}], "analyses": [analysis]})
    assert batch.status_code == 200, batch.text
    assert wait_finished(alpha, batch.json()["id"])["completed"] == 1
    line = lines(alpha, batch.json()["id"])[0]["results"]["membership"]["sequence"]
    direct = post(alpha, "membership", model=MODEL, text=TEXT, prefix=NON_MEMBER, member_prefix=MEMBER)
    assert line == pytest.approx({k: direct["sequence"][k] for k in ("recall", "con_recall")}, rel=1e-9)


@pytest.mark.parametrize(
    ("family", "body", "code", "param"),
    [
        ("membership", {"methods": ["recall"]}, "prefix_required", "prefix"),
        ("membership", {"methods": ["con_recall"], "prefix": NON_MEMBER}, "prefix_required", "member_prefix"),
        ("membership", {"prefix": ""}, "empty_text", "prefix"),
        ("detect", {"prefix": NON_MEMBER}, "invalid_request", "prefix"),
        (
            "membership",
            {"member_prefix": MEMBER, "messages": [{"role": "user", "content": "hi"}]},
            "invalid_request",
            "member_prefix",
        ),
    ],
)
def test_prefix_errors_name_their_field(
    alpha: httpx.Client, family: str, body: dict[str, Any], code: str, param: str
) -> None:
    request = {"model": MODEL, "text": TEXT, **body}
    if "messages" in body:
        request.pop("text")
    response = alpha.post(f"/v1/analysis/{family}", json=request)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


def test_the_new_methods_are_listed_with_their_papers(alpha: httpx.Client) -> None:
    methods = {m["name"]: m for m in alpha.get("/v1/analysis/methods").json()}
    papers = {
        "lastde": "arXiv:2410.06072",
        "dna_detectllm": "arXiv:2509.15550",
        "recall": "arXiv:2406.15968",
        "con_recall": "arXiv:2409.03363",
    }
    for name, arxiv in papers.items():
        assert arxiv in methods[name]["paper"], name
    assert methods["recall"]["requires"] == ["prefix"]
    assert methods["con_recall"]["requires"] == ["prefix", "member_prefix"]
    assert [p["name"] for p in methods["lastde"]["params"]] == ["embed_size", "epsilon", "tau_prime"]
