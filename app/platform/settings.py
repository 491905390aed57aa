"""Gateway settings (environment variables, prefix LOGPROBE_; REDIS_URL for Redis)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator

from workers.config import CommonSettings

KEEP_ALIVE_S = 75


class Settings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = 8000
    # API keys: key -> tenant. Empty means auth is off and every caller is the tenant "public".
    api_keys: dict[str, str] = Field(default_factory=dict)
    api_keys_file: Path | None = None

    default_top_logprobs: int = 5
    max_top_logprobs: int = 20  # the captured top-k
    max_positions: int = Field(default=8192, ge=2)  # tokens per request, before any job exists
    max_new_tokens: int = Field(default=1024, ge=1)
    max_export_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    job_timeout_s: float = Field(default=300.0, gt=0)
    max_queue_depth: int = Field(default=256, ge=1)  # per model: beyond it new jobs get 429
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)  # larger request bodies get 413
    # Idle keep-alive connections stay open this long: longer than clients' own pool expiry (httpx 5 s, load
    # balancers 60 s), so a client never reuses a connection the server is closing at that moment.
    keep_alive_s: int = Field(default=KEEP_ALIVE_S, ge=1)
    # Per gateway process, beyond either a 429 `overloaded`: requests at once (waiting on workers included), and
    # requests working in the process at once (those waiting on a worker do not count).
    max_inflight: int = Field(default=256, ge=1)
    max_busy: int = Field(default=32, ge=1)
    rate_limit_rpm: int = Field(default=0, ge=0)  # requests per minute per tenant (0: no limit)
    rate_limit_tpm: int = Field(default=0, ge=0)  # tokens scored or generated per minute per tenant (0: no limit)
    max_batch_inputs: int = Field(default=10_000, ge=1)  # inputs per POST /v1/batches
    batch_concurrency: int = Field(default=8, ge=1)  # inputs of one batch in flight in this gateway
    # Full distributions leak hidden prompts (PILS): a deployment may refuse raw export and keep the analyses.
    allow_export: bool = True
    json_logs: bool = True  # the gateway's logs as JSON lines with the request id

    @model_validator(mode="after")
    def _merge_keys_file(self) -> Settings:
        if self.api_keys_file is not None:
            self.api_keys = {**self.api_keys, **json.loads(self.api_keys_file.read_text())}
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
