"""Gateway settings (environment variables, prefix LOGPROBE_; REDIS_URL for Redis)."""

from __future__ import annotations

import ipaddress
import json
import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from workers.config import CommonSettings
from workers.contract.names import valid_tenant

KEEP_ALIVE_S = 75
CLOSED_TOP_LOGPROBS = 5  # export off: as many as OpenAI's original completions API gave
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class Settings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = 8000
    # API keys: key -> tenant. Empty means auth is off and every caller is the tenant "public", which the gateway
    # allows only when `allow_anonymous` says so (`logprobe serve` on a loopback address turns it on by itself).
    api_keys: dict[str, str] = Field(default_factory=dict)
    api_keys_file: Path | None = None
    allow_anonymous: bool = False
    # /metrics counts every tenant's work: with API keys on, only this scrape key opens it (not a tenant's key),
    # unless public_metrics opens it to whoever reaches the port. With keys off, it is open like everything else.
    metrics_key: SecretStr | None = None
    public_metrics: bool = False
    # /docs, /redoc and /openapi.json: with API keys on, a valid key is needed, unless public_docs opens them.
    public_docs: bool = False

    default_top_logprobs: int = 5
    # Alternatives per token at most, on every route (native and OpenAI alike; OpenAI's chat and vLLM allow 20 too):
    # the top-k a record captures. /v1/models reports it as `max_top_logprobs`.
    max_top_logprobs: int = Field(default=20, ge=0, le=20)
    max_positions: int = Field(default=8192, ge=2)  # tokens per request, before any job exists
    max_new_tokens: int = Field(default=1024, ge=1)
    max_attribution_passes: int = Field(default=16384, ge=1)  # forward passes one attribution request may ask for
    max_attribution_tokens: int = Field(default=1 << 23, ge=1)  # and tokens read by them (passes x context tokens)
    max_export_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    # Bytes of intermediate layers' states one record may keep (scoring with `layers`); more is 422 layers_too_large.
    max_layer_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    # What one head's training may hold for its inputs (contract.heads.head_training_bytes); larger requests 422.
    max_head_training_bytes: int = Field(default=2 * 1024**3, ge=1024)
    # Bytes of records one key may have written within the record lifetime (counted by the workers per day; a record
    # evicted early still counts until its day ends): past it, new records are 429 quota_exceeded. 0: no quota.
    max_record_bytes_per_tenant: int = Field(default=2 << 30, ge=0)
    # Bytes one key may keep in heads (state, training request, weights), calibrations, frequency tables and batches
    # (spec, inputs, result lines), all kinds together: one budget, since they share one store. Enforced when an
    # object is written (429 quota_exceeded, param object_bytes; a batch line past it becomes an error line),
    # released when the object is deleted or expires. 0: no quota.
    max_object_bytes_per_tenant: int = Field(default=1 << 30, ge=0)
    # How long a head may wait and train once submitted: past it the worker stops it and the head fails, saying so.
    max_head_training_s: float = Field(default=3600.0, gt=0)
    job_timeout_s: float = Field(default=300.0, gt=0)
    max_queue_depth: int = Field(default=256, ge=1)  # per model: beyond it new jobs get 429
    # Per model and gateway process, a tenant's interactive jobs in the queue at once; its others wait their turn
    # here, so another tenant's job never queues behind all of them (app/serving/fair_share.py).
    tenant_share: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)  # larger request bodies get 413
    # Slow or oversized requests (app/platform/connections.py, body_deadline.py): a request head over
    # max_header_bytes is a 431; a head not whole header_read_timeout_s after the connection opened (or after its
    # first byte) closes the connection, with a 408 if part of it came; a body not whole body_read_timeout_s after
    # its head is a 408 `body_timeout`, and the connection is closed.
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    header_read_timeout_s: float = Field(default=10.0, gt=0)
    body_read_timeout_s: float = Field(default=30.0, gt=0)
    # Idle keep-alive connections stay open this long: longer than clients' own pool expiry (httpx 5 s, load
    # balancers 60 s), so a client never reuses a connection the server is closing at that moment.
    keep_alive_s: int = Field(default=KEEP_ALIVE_S, ge=1)
    # On SIGTERM or Ctrl-C, requests under way get this long to finish before `serve` stops its workers (whose
    # heavy jobs then stop at their next slice and wait in Redis for another delivery).
    shutdown_grace_s: int = Field(default=10, ge=0)
    # Per gateway process, beyond either a 429 `overloaded`: requests at once (waiting on workers included), and
    # requests working in the process at once (those waiting on a worker do not count).
    max_inflight: int = Field(default=256, ge=1)
    max_busy: int = Field(default=32, ge=1)
    max_inflight_per_key: int | None = Field(default=None, ge=1)  # one API key's share of max_inflight (3/4)
    rate_limit_rpm: int = Field(default=0, ge=0)  # requests per minute per tenant (0: no limit)
    rate_limit_tpm: int = Field(default=0, ge=0)  # tokens scored or generated per minute per tenant (0: no limit)
    max_batch_inputs: int = Field(default=10_000, ge=1)  # inputs per POST /v1/batches
    batch_concurrency: int = Field(default=8, ge=1)  # inputs of one batch in flight in this gateway
    # Full distributions leak hidden prompts (PILS): a deployment may refuse raw export and keep the analyses.
    allow_export: bool = True
    # Alternatives per token any answer may carry (every route, OpenAI's too), within max_top_logprobs: by default
    # max_top_logprobs with export on and CLOSED_TOP_LOGPROBS with it off. `top_alternatives()` is the policy.
    max_top_logprobs_out: int | None = Field(default=None, ge=0)
    json_logs: bool = True  # the gateway's logs as JSON lines with the request id
    # How often each gateway deletes the durable objects (heads, calibrations, tables, batches, job outcomes, rate
    # counters) whose lifetime has ended: they carry no Redis TTL, so that eviction never takes them.
    expiry_sweep_s: float = Field(default=60.0, gt=0)
    # `logprobe serve`'s private Redis (no REDIS_URL): its folder (one per port below it; default data_dir/redis),
    # its memory limit (bytes or "512mb"; default a quarter of the machine's memory, at most 2 GiB; past it records
    # are evicted, volatile-lru as in compose) and whether it keeps an append-only file there across restarts.
    embedded_redis_dir: Path | None = None
    embedded_redis_maxmemory: str | None = Field(default=None, pattern=r"^[0-9]+([kKmMgG][bB]?)?$")
    embedded_redis_persist: bool = True

    @model_validator(mode="after")
    def _merge_keys_file(self) -> Settings:
        if self.api_keys_file is not None:
            self.api_keys = {**self.api_keys, **json.loads(self.api_keys_file.read_text())}
        bad = sorted({tenant for tenant in self.api_keys.values() if not valid_tenant(tenant)})
        if bad:  # a tenant name becomes part of Redis keys: "a:b" could reach tenant "a"'s neighbours
            raise ValueError(f"tenant names are letters, digits, '.', '_' and '-' (at most 64): not {bad}")
        return self

    def top_alternatives(self) -> int:
        """How many alternatives per token may leave the service, on any route."""
        if self.max_top_logprobs_out is not None:
            return min(self.max_top_logprobs_out, self.max_top_logprobs)
        return self.max_top_logprobs if self.allow_export else min(CLOSED_TOP_LOGPROBS, self.max_top_logprobs)

    def check_access(self) -> None:
        """Production defaults are closed: no API keys and no explicit anonymous access refuses to start."""
        if not self.api_keys and not self.allow_anonymous:
            raise SystemExit(CLOSED_MESSAGE)


CLOSED_MESSAGE = (
    "logprobe: refusing to start the gateway without API keys: set LOGPROBE_API_KEYS (or LOGPROBE_API_KEYS_FILE), "
    "or LOGPROBE_ALLOW_ANONYMOUS=true to let anyone who reaches it in as the tenant 'public'"
)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the gateway to this machine."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_on_loopback(settings: Settings, host: str) -> None:
    """`logprobe serve`'s quick start: with no API keys on a loopback address, anonymous access is on (here and,
    for gateway processes that read the environment, in LOGPROBE_ALLOW_ANONYMOUS). On any other address with no
    keys and no explicit LOGPROBE_ALLOW_ANONYMOUS, exit with one line that says what to set."""
    if settings.api_keys or settings.allow_anonymous:
        return
    if not is_loopback(host):
        raise SystemExit(f"{CLOSED_MESSAGE} (binding {host}, not a loopback address)")
    settings.allow_anonymous = True
    os.environ["LOGPROBE_ALLOW_ANONYMOUS"] = "true"


@lru_cache
def get_settings() -> Settings:
    return Settings()
