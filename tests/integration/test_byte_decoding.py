"""Contrastive decoding across tokenizers through the real service: Emulated Disalignment with Gemma-3-270M
(SentencePiece with byte fallback) as the base and SmolLM2-Instruct (byte-level BPE) as the aligned model, and
expert/amateur contrast between them, decoded by bytes (Phan et al. 2024;
workers/bytelevel/decoding.py). The exact formulas are checked on tiny models in tests/unit/test_byte_decoding.py;
here the whole path answers, streams the same steps and keeps its refusals."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, MODEL, service_env

GEMMA = "gemma-3-270m"
PROMPT = "The capital of France is"
ED = {"name": "ed", "base": GEMMA, "aligned": MODEL, "alpha": 0.3}


@pytest.fixture(scope="module")
def service() -> Iterator[httpx.Client]:
    with (
        LocalService(env=service_env([MODEL, GEMMA], keys=False), log_dir=ARTIFACTS / "byte_decoding") as local,
        httpx.Client(base_url=local.base_url, timeout=600) as client,
    ):
        yield client


def _decode(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/decode/contrastive", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _streamed(client: httpx.Client, **body: Any) -> list[tuple[str, dict[str, Any]]]:
    events, event = [], ""
    with client.stream("POST", "/v1/decode/contrastive", json={"prompt": PROMPT, "stream": True, **body}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    return events


def test_contrast_across_tokenizers_decodes_by_bytes(service: httpx.Client) -> None:
    request = {"preset": ED, "max_tokens": 16, "temperature": 0, "top_logprobs": 5, "record_view": 1}
    body = _decode(service, **request)
    assert body["level"] == "byte" and body["text"].strip()
    data = body["text"].encode()
    steps = body["steps"]
    ended = body["finish_reason"] == "stop" and steps and steps[-1]["id"] == 256
    assert [s["id"] for s in steps] == [*data, *([256] if ended else [])]
    assert "".join(s["text"] for s in steps) == body["text"]  # each character on the step of its first byte
    for step in steps:
        assert len(step["views"]) == 2 and all(math.isfinite(v["logprob"]) and v["logprob"] <= 0 for v in step["views"])
        assert step["top_logprobs"][0]["id"] == step["id"]  # greedy: the combined distribution's best symbol
        assert step["logprob"] == step["top_logprobs"][0]["logprob"] <= 0
        assert step["contrasted"] is None
    assert body["usage"]["completion_tokens"] == len(steps)
    # the record: the aligned view's prompt and the answer re-tokenised by its tokenizer, scored by its model
    record = service.get(f"/v1/records/{body['record_id']}").json()
    assert record["model"] == MODEL and record["kind"] == "generate"
    # seeded and greedy runs repeat; the stream says the same as the answer
    assert _decode(service, **request)["steps"] == steps
    events = _streamed(service, **request)
    assert [e for e, _ in events] == ["step"] * len(steps) + ["done"]
    assert [d for _, d in events[:-1]] == steps
    assert events[-1][1]["text"] == body["text"] and events[-1][1]["level"] == "byte"


def test_seeded_contrast_by_bytes_repeats(service: httpx.Client) -> None:
    """Contrastive decoding's form: expert minus amateur among the bytes the expert finds plausible."""
    request = {
        "views": [{"model": GEMMA, "template": "raw"}, {"model": MODEL, "template": "raw", "weight": -1.0}],
        "plausibility": {"view": 0, "alpha": 0.1},
        "max_tokens": 10,
        "temperature": 1.0,
        "seed": 11,
    }
    first, second = _decode(service, **request), _decode(service, **request)
    assert first["text"] == second["text"] and first["steps"] == second["steps"]
    first["text"].encode("utf-8")
    assert len(first["text"].encode()) <= 10


def test_level_byte_on_one_tokenizer_and_refusals(service: httpx.Client) -> None:
    body = _decode(service, views=[{"model": MODEL, "template": "raw"}], level="byte", max_tokens=6, temperature=0)
    assert body["level"] == "byte" and len(body["steps"]) <= 6
    token = _decode(service, views=[{"model": MODEL, "template": "raw"}], max_tokens=3, temperature=0)
    assert token["level"] == "token"
    for extra, status, code in (
        ({"preset": ED, "level": "token"}, 422, "tokenizer_mismatch"),
        ({"preset": ED, "max_states": 3}, 422, "cover_set_too_large"),
    ):
        response = service.post("/v1/decode/contrastive", json={"prompt": PROMPT, "max_tokens": 8, **extra})
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code


def test_uscd_by_bytes_streams_whether_each_step_was_contrasted(service: httpx.Client) -> None:
    preset = {
        "name": "uscd",
        "model": MODEL,
        "lame_prompt": PROMPT,
        "uncertainty": "top1",
        "threshold": 0.9,
    }
    request = {"preset": preset, "level": "byte", "max_tokens": 8, "temperature": 0, "top_logprobs": 3}
    body = _decode(service, prompt="Rome is the capital of Italy.\nParis is the capital of", **request)
    assert body["level"] == "byte" and all(isinstance(s["contrasted"], bool) for s in body["steps"])
    uncertain = [s["contrasted"] for s in body["steps"]]
    events = _streamed(service, prompt="Rome is the capital of Italy.\nParis is the capital of", **request)
    assert [d["contrasted"] for e, d in events if e == "step"] == uncertain
    assert [d for e, d in events if e == "step"] == body["steps"]
