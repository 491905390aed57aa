"""What the gateway shows without a key: /metrics opens to the metrics key alone (a tenant's key counts for nothing
there), /docs, /redoc and /openapi.json to a valid API key, unless settings open them; every answer carries
nosniff and no framing. Gateways of their own over real HTTP on a real Redis; none of this needs a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.launcher.embedded import EmbeddedRedis
from app.launcher.local_service import ROOT, free_port
from tests.conftest import KEYS, METRICS_AUTH, METRICS_KEY
from workers.lifecycle import die_with_parent

DESCRIPTION = ("/openapi.json", "/docs", "/redoc")
TENANT = {"Authorization": "Bearer key-alpha"}


def wait_alive(base: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        assert proc.poll() is None, f"the gateway exited with {proc.returncode}"
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base} did not answer /healthz")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("exposure-redis"))
    try:
        yield server.start()
    finally:
        server.stop()


def gateway(redis_url: str, log: Path, **settings: str) -> Iterator[str]:
    """A gateway process (uvicorn, as `serve` runs it) with the two test keys and `settings`; its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "LOGPROBE_API_KEYS": json.dumps(KEYS)}
    args = ["-m", "uvicorn", "app.api.gateway:create_app", "--factory", "--port", str(port), "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env={**env, **settings},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_alive(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def closed(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The defaults, with a metrics key as a deployment that scrapes would set it."""
    yield from gateway(redis_url, tmp_path_factory.mktemp("closed") / "gateway.log", LOGPROBE_METRICS_KEY=METRICS_KEY)


@pytest.fixture(scope="module")
def opened(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Both settings that open what the defaults close."""
    log = tmp_path_factory.mktemp("opened") / "gateway.log"
    yield from gateway(redis_url, log, LOGPROBE_PUBLIC_METRICS="true", LOGPROBE_PUBLIC_DOCS="true")


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


def test_metrics_open_to_the_metrics_key_alone(closed: str) -> None:
    refused = httpx.get(f"{closed}/metrics")
    assert_refused(refused)
    assert "LOGPROBE_METRICS_KEY" in refused.json()["error"]["message"]
    assert_refused(httpx.get(f"{closed}/metrics", headers=TENANT))  # a tenant's key does not see every tenant's
    assert_refused(httpx.get(f"{closed}/metrics", headers={"Authorization": "Bearer not-the-key"}))
    scraped = httpx.get(f"{closed}/metrics", headers=METRICS_AUTH)
    assert scraped.status_code == 200 and "logprobe_request_seconds" in scraped.text
    assert_refused(httpx.get(f"{closed}/v1/models", headers=METRICS_AUTH))  # and it opens nothing else


def test_the_api_description_needs_a_key(closed: str) -> None:
    for path in DESCRIPTION:
        assert_refused(httpx.get(f"{closed}{path}"))
        assert_refused(httpx.get(f"{closed}{path}", headers=METRICS_AUTH))
        assert httpx.get(f"{closed}{path}", headers=TENANT).status_code == 200, path
    schema = httpx.get(f"{closed}/openapi.json", headers=TENANT).json()
    assert "/v1/score" in schema["paths"] and not {"/openapi.json", "/docs", "/metrics"} & set(schema["paths"])


def test_settings_open_metrics_and_the_api_description(opened: str) -> None:
    assert httpx.get(f"{opened}/metrics").status_code == 200
    for path in DESCRIPTION:
        assert httpx.get(f"{opened}{path}").status_code == 200, path
    assert "/v1/score" in httpx.get(f"{opened}/openapi.json").json()["paths"]
    assert_refused(httpx.get(f"{opened}/v1/models"))  # the API itself stays closed


def test_every_answer_says_nosniff_and_no_framing(closed: str) -> None:
    for response in (
        httpx.get(f"{closed}/healthz"),
        httpx.get(f"{closed}/v1/models"),  # an error
        httpx.get(f"{closed}/v1/models", headers=TENANT),
        httpx.get(f"{closed}/"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff", response.url
        assert response.headers["x-frame-options"] == "DENY", response.url
    assert "frame-ancestors 'none'" in httpx.get(f"{closed}/").headers["content-security-policy"]
