"""Redis clients for one server or a Redis Cluster, chosen by `LOGPROBE_REDIS_CLUSTER` or by asking the server.

Both sides build their clients here: the gateway an asyncio one, workers and tools a blocking one. A cluster
client follows MOVED/ASK redirects and re-reads the slot map after a failover by itself, and its commands here
wait out a failover for up to RIDE_THROUGH_S; the errors a failover raises while it lasts (a dead master,
CLUSTERDOWN, a slot not covered yet) are `TRANSIENT`: past that, callers retry them or answer 503 with Retry-After.
Keys that one transaction or script touches share a hash slot (workers.contract.keys).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

log = logging.getLogger("workers.redis")

# What a Redis outage or a cluster failover raises while it lasts: nothing is wrong with the request.
TRANSIENT: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
)
# Every error a Redis call may raise (SlotNotCoveredError is the one outside RedisError).
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, SlotNotCoveredError)
STORAGE_FULL = "storage_full"  # the error code of a write Redis refused for want of memory: 503 with Retry-After


def storage_full(exc: BaseException) -> bool:
    """Whether Redis refused a write for want of memory: `maxmemory` reached and nothing it may evict (Redis 6.2
    reports it from inside a script as a plain error that carries the OOM reply)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.exceptions.ResponseError) and "OOM command not allowed" in str(exc)
    )


# A cluster client re-reads the slot map and retries this often before an error reaches the caller.
CLUSTER_RETRIES = 10


# How long one command keeps retrying through a failover (the cluster's node timeout plus an election) before its
# error reaches the caller; redis-py's own retries re-read the slot map but do not wait between tries.
RIDE_THROUGH_S = 10.0


class PatientCluster(redis.cluster.RedisCluster):
    """A blocking cluster client whose commands wait out a failover (backing off) instead of failing at once."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        deadline, delay = time.monotonic() + RIDE_THROUGH_S, 0.1
        while True:
            try:
                return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
            except TRANSIENT:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 1.0)


_ASYNC_RETRIED: tuple[type[Exception], ...] = (*TRANSIENT, AttributeError, RuntimeError)


def _torn_down(exc: Exception) -> bool:
    """A connection that a concurrent request tore down as its node died: redis-py 8.1 hands it out anyway, and
    using it raises AttributeError (its writer is None) or, on uvloop, RuntimeError (the transport is closed)."""
    return isinstance(exc, AttributeError) or (isinstance(exc, RuntimeError) and "closed" in str(exc))


class PatientAsyncCluster(redis.asyncio.cluster.RedisCluster):
    """The asyncio cluster client, waiting out a failover the same way; a torn-down connection is retried too."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        deadline, delay = time.monotonic() + RIDE_THROUGH_S, 0.1
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except _ASYNC_RETRIED as exc:
                if not (isinstance(exc, TRANSIENT) or _torn_down(exc)) or time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)


def is_cluster(url: str, setting: bool | None = None) -> bool:
    """`setting` when given (LOGPROBE_REDIS_CLUSTER), else whether the server at `url` runs in cluster mode;
    a server that cannot be asked now counts as a single Redis (set the setting in deployments)."""
    if setting is not None:
        return setting
    probe = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    except redis.RedisError as exc:
        log.warning("could not ask %s whether it is a cluster (%s); using it as a single Redis", url, exc)
        return False
    finally:
        probe.close()


def _cluster_options(retry: type[Retry] | type[AsyncRetry] = Retry) -> dict[str, Any]:
    """A cluster client's options; `retry` is the retry class of its kind (an asyncio client needs the asyncio
    one: redis-py 8.2 replaces a blocking Retry given to it, and with it any custom policy, and warns)."""
    return {"retry": retry(ExponentialBackoff(cap=2.0, base=0.1), CLUSTER_RETRIES), "require_full_coverage": False}


def connect(url: str, cluster: bool | None = None, **options: Any) -> redis.Redis:
    """A blocking client; a RedisCluster speaks the same commands, so callers keep one type."""
    if is_cluster(url, cluster):
        return cast(redis.Redis, PatientCluster.from_url(url, **_cluster_options(), **options))
    return redis.Redis.from_url(url, **options)


def connect_async(url: str, cluster: bool | None = None, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client (the gateway's); a RedisCluster speaks the same commands, so callers keep one type."""
    if is_cluster(url, cluster):
        client = PatientAsyncCluster.from_url(url, **_cluster_options(AsyncRetry), **options)
        return cast(redis.asyncio.Redis, client)
    return redis.asyncio.Redis.from_url(url, **options)
