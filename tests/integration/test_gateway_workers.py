"""`logprobe serve --gateway-workers 2`: two gateway processes on one port, against the shared Redis and worker;
their metrics add up whichever process is scraped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from app.launcher.local_service import ROOT, free_port, wait_ready
from tests.conftest import KEYS, METRICS_AUTH, METRICS_KEY, MODEL

REQUESTS = 40


def models_count(metrics: str) -> float:
    pattern = r'^logprobe_request_seconds_count\{method="GET",route="/v1/models",status="200"\} (\S+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, metrics, re.M))


def test_two_gateway_processes_share_the_port_and_their_metrics(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PYTHONPATH": str(ROOT),
        "LOGPROBE_API_KEYS": json.dumps(KEYS),
        "LOGPROBE_METRICS_KEY": METRICS_KEY,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.launcher.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                "0",
                "--gateway-workers",
                "2",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, [proc])
            headers = {"Authorization": "Bearer key-alpha", "Connection": "close"}  # a new connection each time
            for _ in range(REQUESTS):
                assert httpx.get(f"{base}/v1/models", headers=headers).status_code == 200
            score = httpx.post(f"{base}/v1/score", json={"model": MODEL, "text": "Two gateways."}, headers=headers)
            assert score.status_code == 200, score.text
            scrapes = [
                httpx.get(f"{base}/metrics", headers={**METRICS_AUTH, "Connection": "close"}).text for _ in range(6)
            ]
            assert all(models_count(text) == REQUESTS for text in scrapes)  # every scrape sees both processes
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    pids = {line["pid"] for line in lines if line.get("path") == "/v1/models"}
    assert len(pids) == 2  # both processes answered
