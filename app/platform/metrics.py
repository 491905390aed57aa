"""Prometheus metrics of the gateway: request latency by route, job latency and queue depth per model, cache
hits, tokens scored and generated, live workers. Queue depth and workers are read from Redis at scrape time.

With several gateway processes (`logprobe serve --gateway-workers N`), PROMETHEUS_MULTIPROC_DIR is set before
they start: each process writes its values there and a scrape of any of them adds them all up."""

from __future__ import annotations

import os
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from workers.contract.keys import LANES, jobs_stream

REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Histogram(
    "logprobe_request_seconds",
    "HTTP request latency by route",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
JOBS = Histogram(
    "logprobe_job_seconds",
    "Time from submitting a job to its outcome",
    ["model", "kind", "ok"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CACHE = Counter(
    "logprobe_cache_lookups",
    "Record lookups by result (hit: no job needed; lost: evicted between its scoring and its reading, scored again)",
    ["result"],
    registry=REGISTRY,
)
TOKENS = Counter("logprobe_tokens", "Tokens scored (new records) and generated", ["kind"], registry=REGISTRY)
CANCELLED = Counter("logprobe_jobs_cancelled", "Jobs cancelled because their client went away", registry=REGISTRY)
# Read from Redis by whichever process is scraped: in multiprocess mode the most recent reading wins.
QUEUE = Gauge(
    "logprobe_queue_depth",
    "Jobs waiting or running per model",
    ["model"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
FAIR_SHARE_WAITING = Gauge(
    "logprobe_fair_share_waiting",
    "Requests waiting in this gateway for one of their tenant's turns in a model's job queue",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
WORKERS = Gauge(
    "logprobe_workers", "Live workers per model", ["model"], registry=REGISTRY, multiprocess_mode="mostrecent"
)


class Catalog(Protocol):
    """What a scrape reads of the model catalog (the request path's `ModelCatalog`)."""

    redis: Any

    async def names(self) -> list[str]: ...

    async def live_workers(self, name: str) -> int: ...


async def render(catalog: Catalog) -> bytes:
    for name in await catalog.names():
        QUEUE.labels(model=name).set(sum([await catalog.redis.xlen(jobs_stream(name, lane)) for lane in LANES]))
        WORKERS.labels(model=name).set(await catalog.live_workers(name))
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(REGISTRY)
    merged = CollectorRegistry()
    MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return generate_latest(merged)
