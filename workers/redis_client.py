"""Redis clients for one server or a Redis Cluster, chosen by `LOGPROBE_REDIS_CLUSTER` or by asking the server.

Both sides build their clients here: the gateway an asyncio one, workers and tools a blocking one. A cluster
client follows MOVED/ASK redirects and re-reads the slot map after a failover by itself; the errors a failover
raises while it lasts (a dead master, CLUSTERDOWN, a slot not covered yet) are `TRANSIENT`: callers retry them
or answer 503 with Retry-After. Keys that one transaction or script touches share a hash slot (workers.protocol).
"""

from __future__ import annotations

import logging
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
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
# A cluster client re-reads the slot map and retries this often before an error reaches the caller.
CLUSTER_RETRIES = 10


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


def _cluster_options() -> dict[str, Any]:
    return {"retry": Retry(ExponentialBackoff(cap=2.0, base=0.1), CLUSTER_RETRIES), "require_full_coverage": False}


def connect(url: str, cluster: bool | None = None, **options: Any) -> redis.Redis:
    """A blocking client; a RedisCluster speaks the same commands, so callers keep one type."""
    if is_cluster(url, cluster):
        return cast(redis.Redis, redis.cluster.RedisCluster.from_url(url, **_cluster_options(), **options))
    return redis.Redis.from_url(url, **options)


def connect_async(url: str, cluster: bool | None = None, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client (the gateway's); a RedisCluster speaks the same commands, so callers keep one type."""
    if is_cluster(url, cluster):
        client = redis.asyncio.cluster.RedisCluster.from_url(url, **_cluster_options(), **options)
        return cast(redis.asyncio.Redis, client)
    return redis.asyncio.Redis.from_url(url, **options)
