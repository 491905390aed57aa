"""Shared fixtures: a real Redis server, a real worker with the packaged SmolLM2, the gateway over real HTTP."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.launcher.local_service import ROOT, LocalService

MODEL = "smollm2-135m-instruct"
KEYS = {"key-alpha": "alpha", "key-beta": "beta"}
METRICS_KEY = "key-metrics"  # LOGPROBE_METRICS_KEY: /metrics opens to it alone (tenants' keys do not open it)
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_KEY}"}
# The model cache outlives test runs: the GGUF is converted to safetensors once per machine.
DATA_DIR = Path(os.environ.get("LOGPROBE_DATA_DIR", Path.home() / ".cache" / "logprobe"))
ARTIFACTS = ROOT / "artifacts"


def service_env(models: list[Any], keys: bool = True, threads: int = 2) -> dict[str, str]:
    """The environment of a LocalService serving `models` (names or specs), with the two API keys."""
    env = {
        "LOGPROBE_MODELS": json.dumps(models),
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_WORKER_THREADS": str(threads),
    }
    return {**env, "LOGPROBE_API_KEYS": json.dumps(KEYS), "LOGPROBE_METRICS_KEY": METRICS_KEY} if keys else env


@pytest.fixture(scope="session")
def local_service() -> Iterator[LocalService]:
    """Redis, one worker started on its own (`python -m workers`) and the gateway, with two API keys."""
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps(KEYS),
        "LOGPROBE_METRICS_KEY": METRICS_KEY,
        "LOGPROBE_WORKER_THREADS": "2",
    }
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


SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "vocab_size": 49152,
}


def _save_with_smollm2_tokenizer(folder: Path, model: Any) -> str:
    from workers.config import PACKAGED_MODELS
    from workers.models import safetensors_dir

    tokenizer_dir, _ = safetensors_dir(PACKAGED_MODELS[MODEL], DATA_DIR)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny random models that share SmolLM2's tokenizer, saved as local HF folders: a Llama, a Gemma-2 with
    final-logit soft-capping, a Cohere whose logits are scaled by `logit_scale` (W·h times a constant the
    unembedding knows), and a Falcon-H1 whose `lm_head_multiplier` the unembedding does not model (its logits are
    not W·h: it keeps full rows)."""
    import torch
    from transformers import (
        CohereConfig,
        CohereForCausalLM,
        FalconH1Config,
        FalconH1ForCausalLM,
        Gemma2Config,
        Gemma2ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    gemma2 = Gemma2Config(**SMALL, head_dim=16, final_logit_softcapping=5.0, sliding_window=16)
    mamba = {"mamba_d_ssm": 64, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_d_state": 16, "mamba_n_groups": 1}
    falcon_h1 = FalconH1Config(**SMALL, **mamba, lm_head_multiplier=0.5)
    return {
        "tiny-llama": _save_with_smollm2_tokenizer(root / "llama", LlamaForCausalLM(LlamaConfig(**SMALL))),
        "tiny-gemma2": _save_with_smollm2_tokenizer(root / "gemma2", Gemma2ForCausalLM(gemma2)),
        "tiny-cohere": _save_with_smollm2_tokenizer(
            root / "cohere", CohereForCausalLM(CohereConfig(**SMALL, logit_scale=0.5))
        ),
        "tiny-falcon-h1": _save_with_smollm2_tokenizer(root / "falcon-h1", FalconH1ForCausalLM(falcon_h1)),
    }


def hf_logprobs(path: str | Path, ids: list[int]) -> Any:
    """float64 log-probabilities [T, V] from transformers' own forward pass of the model in `path`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1).numpy()
