"""Shared fixtures: a real Redis server, a real worker with the packaged SmolLM2, the gateway over real HTTP."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.local_service import ROOT, LocalService

MODEL = "smollm2-135m-instruct"
KEYS = {"key-alpha": "alpha", "key-beta": "beta"}
# The model cache outlives test runs: the GGUF is converted to safetensors once per machine.
DATA_DIR = Path(os.environ.get("LOGPROBE_DATA_DIR", Path.home() / ".cache" / "logprobe"))
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="session")
def local_service() -> Iterator[LocalService]:
    """Redis, one worker started on its own (`python -m workers`) and the gateway, with two API keys."""
    env = {"LOGPROBE_DATA_DIR": str(DATA_DIR), "LOGPROBE_API_KEYS": json.dumps(KEYS), "LOGPROBE_WORKER_THREADS": "2"}
    with LocalService(env=env, log_dir=ARTIFACTS) as service:
        yield service


@pytest.fixture(scope="session")
def service(local_service: LocalService) -> str:
    return local_service.base_url


@pytest.fixture(scope="session")
def redis_url(local_service: LocalService) -> str:
    return local_service.redis_url


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
def hf_smollm2() -> tuple[Any, Any]:
    """transformers' own SmolLM2, from the same converted files the worker loads, as the reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.config import PACKAGED_MODELS
    from workers.models import safetensors_dir

    folder, _ = safetensors_dir(PACKAGED_MODELS[MODEL], DATA_DIR)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)
