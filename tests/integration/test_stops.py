"""A completion that hits a stop string reports, counts, streams and stores only what comes before it: its
tokens, usage, OpenAI logprobs and record all end where its text ends."""

from __future__ import annotations

import json

import httpx
from openai import OpenAI

from tests.conftest import MODEL

PROMPT = "Count: 1, 2, 3,"
STOP = [" 6"]


def _record_tokens(alpha: httpx.Client, record_id: str) -> list[dict[str, object]]:
    record = alpha.get(f"/v1/records/{record_id}")
    assert record.status_code == 200
    body = record.json()
    return body["tokens"][body["n_prompt"] :]  # type: ignore[no-any-return]


def test_generate_ends_its_tokens_and_record_where_its_text_ends(alpha: httpx.Client) -> None:
    free = alpha.post(
        "/v1/generate", json={"model": MODEL, "prompt": PROMPT, "temperature": 0, "max_tokens": 12}
    ).json()
    assert " 6" in free["text"]  # without the stop, the model goes past it: the stop does cut something
    body = alpha.post(
        "/v1/generate", json={"model": MODEL, "prompt": PROMPT, "temperature": 0, "max_tokens": 12, "stop": STOP}
    ).json()
    assert body["finish_reason"] == "stop"
    assert body["text"] == free["text"][: free["text"].index(" 6")]
    assert "".join(t["text"] for t in body["tokens"]) == body["text"]
    assert body["usage"]["completion_tokens"] == len(body["tokens"])
    stored = _record_tokens(alpha, body["record_id"])
    assert [t["id"] for t in stored] == [t["id"] for t in body["tokens"]]
    assert [t["logprob"] for t in stored] == [t["logprob"] for t in body["tokens"]]


def test_openai_completions_logprobs_usage_and_stream_end_at_the_stop(service: str, alpha: httpx.Client) -> None:
    client = OpenAI(base_url=f"{service}/v1", api_key="key-alpha")
    answer = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=12, stop=STOP, logprobs=2)
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and " 6" not in choice.text
    assert choice.logprobs is not None and "".join(choice.logprobs.tokens or []) == choice.text
    assert answer.usage is not None and answer.usage.completion_tokens == len(choice.logprobs.tokens or [])
    record_id = answer.model_extra["record_id"]  # type: ignore[index]
    assert len(_record_tokens(alpha, record_id)) == answer.usage.completion_tokens
    streamed = client.completions.create(
        model=MODEL, prompt=PROMPT, temperature=0, max_tokens=12, stop=STOP, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text


def test_contrastive_steps_streamed_and_answered_end_at_the_stop(alpha: httpx.Client) -> None:
    request = {
        "prompt": PROMPT,
        "views": [{"model": MODEL, "template": "raw", "weight": 1.0}],
        "max_tokens": 12,
        "temperature": 0,
        "stop": STOP,
    }
    body = alpha.post("/v1/decode/contrastive", json=request).json()
    assert body["finish_reason"] == "stop"
    assert "".join(s["text"] for s in body["steps"]) == body["text"]
    assert body["usage"]["completion_tokens"] == len(body["steps"])
    with alpha.stream("POST", "/v1/decode/contrastive", json={**request, "stream": True}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["id"] for e in events[:-1]] == [s["id"] for s in body["steps"]]
    assert events[-1]["text"] == body["text"]
    assert len(_record_tokens(alpha, body["record_id"])) == len(body["steps"])
