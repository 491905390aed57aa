"""Shared fixtures: a real Redis server, a real worker with the packaged SmolLM2, the gateway over real HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.embedded import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
KEYS = {"key-alpha": "alpha", "key-beta": "beta"}
# The model cache outlives test runs: the GGUF is converted to safetensors once per machine.
DATA_DIR = Path(os.environ.get("LOGPROBE_DATA_DIR", Path.home() / ".cache" / "logprobe"))
ARTIFACTS = ROOT / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base_url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} not ready after {timeout_s}s")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def service_env(redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps(KEYS),
        "LOGPROBE_WORKER_THREADS": "2",
        "PYTHONPATH": str(ROOT),
    }


def _spawn(args: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / log_name).open("wb")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def service(service_env: dict[str, str]) -> Iterator[str]:
    """The gateway on a free port and one worker started on its own (`python -m workers`)."""
    port = free_port()
    worker = _spawn([sys.executable, "-m", "workers"], service_env, "worker.log")
    gateway = _spawn(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        service_env,
        "gateway.log",
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, [worker, gateway])
        yield base_url
    finally:
        _stop(gateway)
        _stop(worker)


@pytest.fixture
def alpha(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, headers={"Authorization": "Bearer key-alpha"}, timeout=300) as client:
        yield client


@pytest.fixture
def beta(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, headers={"Authorization": "Bearer key-beta"}, timeout=300) as client:
        yield client


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def hf_smollm2() -> tuple[object, object]:
    """transformers' own SmolLM2, from the same converted files the worker loads, as the reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.config import PACKAGED_MODELS
    from workers.models import safetensors_dir

    folder, _ = safetensors_dir(PACKAGED_MODELS[MODEL], DATA_DIR)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)
