"""/metrics parses with prometheus_client's own parser, opens to the metrics key, and its counters move with requests;
the gateway's log lines are JSON carrying the request id the response echoes."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ARTIFACTS, METRICS_AUTH, MODEL


def scrape(service: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{service}/metrics", headers=METRICS_AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_move_with_requests(service: str, alpha: httpx.Client) -> None:
    before = scrape(service)
    text = "Metrics count this brand new text exactly once."
    first = alpha.post("/v1/score", json={"model": MODEL, "text": text}, headers={"X-Request-Id": "metrics-probe"})
    alpha.post("/v1/score", json={"model": MODEL, "text": text})
    generated = alpha.post("/v1/generate", json={"model": MODEL, "prompt": "Hi", "max_tokens": 3, "temperature": 0})
    after = scrape(service)
    assert (
        value(after, "logprobe_cache_lookups_total", result="miss")
        - value(before, "logprobe_cache_lookups_total", result="miss")
        >= 1
    )
    assert (
        value(after, "logprobe_cache_lookups_total", result="hit")
        - value(before, "logprobe_cache_lookups_total", result="hit")
        >= 1
    )
    assert (
        value(after, "logprobe_tokens_total", kind="scored") - value(before, "logprobe_tokens_total", kind="scored")
        >= first.json()["n_tokens"]
    )
    assert (
        value(after, "logprobe_tokens_total", kind="generated")
        - value(before, "logprobe_tokens_total", kind="generated")
        >= generated.json()["usage"]["completion_tokens"]
    )
    assert (
        value(after, "logprobe_request_seconds_count", route="/v1/score", status="200")
        - value(before, "logprobe_request_seconds_count", route="/v1/score", status="200")
        == 2
    )
    assert value(after, "logprobe_job_seconds_count", model=MODEL, kind="generate") >= 1
    assert value(after, "logprobe_workers", model=MODEL) == 1
    assert ("logprobe_queue_depth", (("model", MODEL),)) in after

    assert first.headers["X-Request-Id"] == "metrics-probe"
    lines = [json.loads(line) for line in (ARTIFACTS / "gateway.log").read_text().splitlines() if line.startswith("{")]
    probe = [line for line in lines if line.get("request_id") == "metrics-probe"]
    assert probe and probe[0]["path"] == "/v1/score" and probe[0]["status"] == 200 and probe[0]["ms"] > 0
