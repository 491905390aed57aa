"""Consistency in batches (#31): a batch whose `consistency` options run /v1/analysis/consistency on every input (a
prompt or a chat, an `answer` of its own or the greedy one); each line equals that endpoint's answer for the same
input and seed, a bad input fails alone, bad options are refused before anything runs, and a cancelled batch stops.
The session's gateway, worker and Redis, the packaged SmolLM2."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL
from tests.integration.test_batches import lines, wait_finished

pytestmark = pytest.mark.slow

OPTIONS: dict[str, Any] = {"n": 2, "max_tokens": 6, "seed": 21, "temperature": 0.9}


def direct(client: httpx.Client, item: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """/v1/analysis/consistency for one batch input (its `text` is the prompt)."""
    body = {"model": MODEL, **options, **{k: v for k, v in item.items() if k != "custom_id"}}
    if "text" in body:
        body["prompt"] = body.pop("text")
    response = client.post("/v1/analysis/consistency", json=body, timeout=600)
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_same_answer(got: dict[str, Any], want: dict[str, Any]) -> None:
    """The same samples, records and texts; the same numbers (to float noise: the worker batches differently)."""
    keep = ("index", "seed", "record_id", "text", "finish_reason", "n_tokens", "error")
    assert [{k: s[k] for k in keep} for s in got["samples"]] == [{k: s[k] for k in keep} for s in want["samples"]]
    for s, w in zip(got["samples"], want["samples"], strict=True):
        assert s["log_likelihood"] == pytest.approx(w["log_likelihood"], abs=1e-5)
    for field in ("text", "record_id", "greedy"):
        assert got["answer"][field] == want["answer"][field], field
    assert got["answer"]["similarity"] == pytest.approx(want["answer"]["similarity"], abs=1e-9)
    assert got["answer"]["p_true"] == pytest.approx(want["answer"]["p_true"], rel=1e-4)
    assert got["similarity"] == [pytest.approx(row, abs=1e-9) for row in want["similarity"]]
    assert got["methods"] == want["methods"] and got["undefined"] == want["undefined"]
    assert set(got["sequence"]) == set(want["sequence"])
    for name, value in want["sequence"].items():
        assert got["sequence"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_each_line_is_the_consistency_endpoints_answer_and_a_bad_input_fails_alone(alpha: httpx.Client) -> None:
    salt = uuid.uuid4().hex[:6]
    inputs: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": f"Name a colour of the sky ({salt})."}], "custom_id": "chat"},
        {"text": f"Q: What is the capital of France? ({salt})\nA:", "answer": " Paris", "custom_id": "given"},
        {"text": "word " * 9000, "custom_id": "too-long"},
        {"text": f"The opposite of hot is ({salt})", "custom_id": "prompt"},
    ]
    body = {"model": MODEL, "inputs": inputs, "consistency": OPTIONS}
    created = alpha.post("/v1/batches", json=body)
    assert created.status_code == 200, created.text
    assert created.json()["analyses"] == ["consistency"]
    done = wait_finished(alpha, created.json()["id"], timeout_s=600)
    assert (done["status"], done["completed"], done["failed"]) == ("completed", 3, 1)
    results = lines(alpha, created.json()["id"])
    assert [r["custom_id"] for r in results] == ["chat", "given", "too-long", "prompt"]
    assert results[2]["error"]["code"] == "context_length_exceeded" and results[2]["results"] is None
    for item, line in zip(inputs, results, strict=True):
        if item["custom_id"] == "too-long":
            continue
        assert line["error"] is None and set(line["results"]) == {"consistency"}
        got = line["results"]["consistency"]
        assert line["record_id"] == got["answer"]["record_id"]
        assert [s["seed"] for s in got["samples"]] == [21, 22]
        assert got["answer"]["greedy"] is ("answer" not in item)
        if "answer" in item:
            assert got["answer"]["text"] == item["answer"]
        assert_same_answer(got, direct(alpha, item, OPTIONS))


@pytest.mark.parametrize(
    ("change", "code", "param"),
    [
        ({"consistency": {**OPTIONS, "n": 1}}, "invalid_request", "consistency.n"),
        ({"consistency": {**OPTIONS, "methods": ["perplexity"]}}, "unknown_method", "consistency.methods"),
        ({"consistency": {**OPTIONS, "similarity": "cosine"}}, "invalid_request", "consistency.similarity"),
        ({"consistency": {**OPTIONS, "max_tokens": 257}}, "invalid_request", "consistency.max_tokens"),
        ({"analyses": [{"family": "uncertainty"}]}, "invalid_request", "analyses"),
        ({"retain": "full"}, "invalid_request", "retain"),
        ({"consistency": None}, "invalid_request", "inputs.0.answer"),  # an answer, and nothing judges it
        ({"inputs": [{"text": "x", "answer": ""}]}, "invalid_request", "inputs.0.answer"),
    ],
)
def test_bad_consistency_batches_are_refused_before_anything_runs(
    alpha: httpx.Client, change: dict[str, Any], code: str, param: str
) -> None:
    body = {"model": MODEL, "inputs": [{"text": "Q: 2 + 2?\nA:", "answer": " 4"}], "consistency": OPTIONS, **change}
    response = alpha.post("/v1/batches", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


def test_a_cancelled_consistency_batch_stops_and_gives_every_input_a_line(alpha: httpx.Client) -> None:
    salt = uuid.uuid4().hex[:8]
    inputs = [{"text": f"Count to {i} ({salt}):", "custom_id": f"n{i}"} for i in range(12)]
    options = {**OPTIONS, "methods": ["lexical_similarity"]}
    batch = alpha.post("/v1/batches", json={"model": MODEL, "inputs": inputs, "consistency": options}).json()
    at_cancel = alpha.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert at_cancel["status"] == "cancelled"
    time.sleep(1.5)  # inputs in flight at the cancel finish now: their lines are not kept
    after = alpha.get(f"/v1/batches/{batch['id']}").json()
    assert {k: after[k] for k in ("completed", "failed", "cancelled")} == {
        k: at_cancel[k] for k in ("completed", "failed", "cancelled")
    }
    assert after["completed"] + after["failed"] + after["cancelled"] == 12 and after["cancelled"] > 0
    results = lines(alpha, batch["id"])
    assert [r["custom_id"] for r in results] == [f"n{i}" for i in range(12)]
    skipped = [r for r in results if r["error"] and r["error"]["code"] == "cancelled"]
    assert len(skipped) == after["cancelled"]
