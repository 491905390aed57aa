"""One policy for how much of a distribution leaves the service (#13 item 17): with export off, at most 5
alternatives per token on every route that gives alternatives, the OpenAI routes included, and no raw rows;
with export on, one limit on every route (#30 item 14): 20, what records capture and `/v1/models` reports."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL

CLOSED = 5
CHAT = [{"role": "user", "content": "Name a colour."}]
PRESET = {"name": "prompt_contrast", "model": MODEL, "alpha": 0.5}


@pytest.fixture(scope="module")
def closed() -> Iterator[httpx.Client]:
    """A deployment that does not export full distributions."""
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps({"key-closed": "closed"}),
        "LOGPROBE_ALLOW_EXPORT": "false",
        "LOGPROBE_WORKER_THREADS": "2",
    }
    with (
        LocalService(env=env, log_dir=ARTIFACTS / "closed") as service,
        httpx.Client(base_url=service.base_url, headers={"Authorization": "Bearer key-closed"}, timeout=300) as client,
    ):
        yield client


def refused(response: httpx.Response, param: str, limit: int) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("top_logprobs_too_large", param)
    assert f"at most {limit}" in error["message"]
    return str(error["message"])


def alternatives(tokens: list[dict[str, Any]]) -> set[int]:
    return {len(t["top_logprobs"]) for t in tokens if t["top_logprobs"] is not None}


def test_native_routes_give_at_most_five_without_export(closed: httpx.Client) -> None:
    assert {m["max_top_logprobs"] for m in closed.get("/v1/models").json()["data"]} == {CLOSED}
    body = {"model": MODEL, "text": "Export is off on this deployment."}
    assert "(no export)" in refused(closed.post("/v1/score", json={**body, "top_logprobs": 6}), "top_logprobs", 5)
    scored = closed.post("/v1/score", json=body).json()
    assert alternatives(scored["tokens"]) == {CLOSED}  # the default, within the policy
    assert alternatives(closed.post("/v1/score", json={**body, "top_logprobs": 2}).json()["tokens"]) == {2}

    record = f"/v1/records/{scored['record_id']}"
    refused(closed.get(record, params={"top_logprobs": 6}), "top_logprobs", 5)
    assert alternatives(closed.get(record).json()["tokens"]) == {CLOSED}
    rows = closed.get(f"{record}/logprobs")
    assert rows.status_code == 403 and rows.json()["error"]["code"] == "export_disabled"

    request = {"model": MODEL, "prompt": "Colours:", "max_tokens": 3, "temperature": 0}
    refused(closed.post("/v1/generate", json={**request, "top_logprobs": 20}), "top_logprobs", 5)
    assert alternatives(closed.post("/v1/generate", json=request).json()["tokens"]) == {CLOSED}

    decode = {"prompt": "Colours:", "preset": PRESET, "max_tokens": 3, "temperature": 0}
    refused(closed.post("/v1/decode/contrastive", json={**decode, "top_logprobs": 6}), "top_logprobs", 5)
    steps = closed.post("/v1/decode/contrastive", json=decode).json()["steps"]
    assert steps and {len(s["top_logprobs"]) for s in steps} == {CLOSED}


def test_openai_routes_give_at_most_five_without_export(closed: httpx.Client) -> None:
    chat = {"model": MODEL, "messages": CHAT, "max_tokens": 4, "temperature": 0, "logprobs": True}
    refused(closed.post("/v1/chat/completions", json={**chat, "top_logprobs": 20}), "top_logprobs", 5)
    answer = closed.post("/v1/chat/completions", json={**chat, "top_logprobs": 5}).json()
    content = answer["choices"][0]["logprobs"]["content"]
    assert content and {len(t["top_logprobs"]) for t in content} == {CLOSED}
    with closed.stream("POST", "/v1/chat/completions", json={**chat, "top_logprobs": 5, "stream": True}) as stream:
        chunks = [json.loads(x[6:]) for x in stream.iter_lines() if x.startswith("data: {")]
    streamed = [t for c in chunks if c["choices"][0].get("logprobs") for t in c["choices"][0]["logprobs"]["content"]]
    assert streamed and {len(t["top_logprobs"]) for t in streamed} == {CLOSED}

    completion = {"model": MODEL, "prompt": "Colours: red,", "max_tokens": 4, "temperature": 0, "echo": True}
    refused(closed.post("/v1/completions", json={**completion, "logprobs": 6}), "logprobs", 5)
    logprobs = closed.post("/v1/completions", json={**completion, "logprobs": 5}).json()["choices"][0]["logprobs"]
    tops = [top for top in logprobs["top_logprobs"] if top is not None]
    assert len(tops) == len(logprobs["tokens"]) - 1  # prompt (echoed) and completion alike
    # the top 5 and, as the OpenAI API adds it, the chosen token (a dict by token text: one text counts once)
    assert max(len(top) for top in tops) in (CLOSED, CLOSED + 1)
    tokens = logprobs["tokens"][1:]
    assert all(len({k for k in top if k != token}) <= CLOSED for top, token in zip(tops, tokens, strict=True))


def finished_lines(client: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    """The batch's result lines once it has run (polled: a wait, not a timing assertion)."""
    deadline = time.monotonic() + 300
    while client.get(f"/v1/batches/{batch_id}").json()["status"] != "completed":
        assert time.monotonic() < deadline, f"batch {batch_id} did not finish"
        time.sleep(0.3)
    return [json.loads(line) for line in client.get(f"/v1/batches/{batch_id}/results").text.splitlines()]


def test_batch_lines_carry_values_not_alternatives(closed: httpx.Client) -> None:
    created = closed.post(
        "/v1/batches",
        json={
            "model": MODEL,
            "inputs": [{"text": "A batch on a closed deployment."}],
            "analyses": [{"family": "uncertainty", "methods": ["logprob", "entropy"]}],
            "include_tokens": True,
        },
    ).json()
    (line,) = finished_lines(closed, created["id"])
    tokens = line["results"]["uncertainty"]["tokens"]
    assert tokens and all(set(t["values"]) == {"logprob", "entropy"} for t in tokens)
    assert "top_logprobs" not in json.dumps(line)


def test_with_export_every_route_keeps_the_one_reported_limit(alpha: httpx.Client) -> None:
    (limit,) = {m["max_top_logprobs"] for m in alpha.get("/v1/models").json()["data"]}
    assert limit == 20
    over = limit + 1
    body = {"model": MODEL, "text": "Export is on here.", "top_logprobs": over}
    assert "deployment" not in refused(alpha.post("/v1/score", json=body), "top_logprobs", limit)
    generate = {"model": MODEL, "prompt": "Colours:", "max_tokens": 2, "temperature": 0}
    refused(alpha.post("/v1/generate", json={**generate, "top_logprobs": over}), "top_logprobs", limit)
    chat = {"model": MODEL, "messages": CHAT, "max_tokens": 2, "temperature": 0, "logprobs": True}
    for k in (over, 50, 100):
        refused(alpha.post("/v1/chat/completions", json={**chat, "top_logprobs": k}), "top_logprobs", limit)
        completion = {"model": MODEL, "prompt": "Colours:", "max_tokens": 2, "temperature": 0, "logprobs": k}
        refused(alpha.post("/v1/completions", json=completion), "logprobs", limit)
        prompt = {"model": MODEL, "prompt": "Colours:", "max_tokens": 1, "prompt_logprobs": k}
        refused(alpha.post("/v1/completions", json=prompt), "prompt_logprobs", limit)
    decode = {"prompt": "Colours:", "preset": PRESET, "max_tokens": 2, "temperature": 0, "top_logprobs": over}
    refused(alpha.post("/v1/decode/contrastive", json=decode), "top_logprobs", limit)
    content = alpha.post("/v1/chat/completions", json={**chat, "top_logprobs": limit}).json()
    assert {len(t["top_logprobs"]) for t in content["choices"][0]["logprobs"]["content"]} == {limit}
    completion = {"model": MODEL, "prompt": "Colours:", "max_tokens": 2, "temperature": 0, "logprobs": limit}
    tops = alpha.post("/v1/completions", json=completion).json()["choices"][0]["logprobs"]["top_logprobs"]
    # the top k and, as the OpenAI API adds it, the chosen token (a dict by token text: one text counts once)
    assert tops and max(len(top) for top in tops) in (limit, limit + 1)
