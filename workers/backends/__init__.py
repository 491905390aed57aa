"""Model backends. Imported lazily so that a worker only loads the engine it uses."""

from __future__ import annotations

from pathlib import Path

from workers.backends.base import Backend
from workers.config import ModelSpec


def load_backend(spec: ModelSpec, data_dir: Path) -> Backend:
    if spec.backend == "hf":
        from workers.backends.hf import HFBackend

        return HFBackend(spec, data_dir)
    if spec.backend == "vllm":
        from workers.backends.vllm import VLLMBackend

        return VLLMBackend(spec, data_dir)
    raise NotImplementedError(f"backend {spec.backend!r} is not available in this build")
