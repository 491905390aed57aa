"""The launcher's Redis processes: a start that fails leaves nothing running, nor does a starter killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from app.launcher import embedded
from app.launcher.embedded import EmbeddedRedis
from app.launcher.local_service import ROOT
from tests.integration.test_embedded import pid_alive


def test_a_server_that_never_answers_is_stopped_when_the_start_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = tmp_path / "silent-server"  # takes redis-server's arguments, opens no socket
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    monkeypatch.setattr(embedded, "redis_server_binary", lambda: silent)
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def spy(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        process = popen(*args, **kwargs)  # type: ignore[call-overload]
        started.append(process)
        return process  # type: ignore[no-any-return]

    monkeypatch.setattr(subprocess, "Popen", spy)
    server = EmbeddedRedis(tmp_path / "redis")
    with pytest.raises(redis.ConnectionError):
        server.start(timeout_s=0.2)
    assert len(started) == 1
    assert started[0].poll() is not None  # not left running
    assert server.process is None


STARTS_A_NODE = """
import pathlib, sys, time
from app.launcher.cluster import RedisNode
node = RedisNode(pathlib.Path(sys.argv[1])).start()
print(node.proc.pid, flush=True)
time.sleep(600)
"""


def test_a_cluster_node_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """Like the service's processes: a test run or bench killed outright leaves no redis-server behind."""
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTS_A_NODE, str(tmp_path / "node")],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert starter.stdout is not None
    pid = int(starter.stdout.readline())
    assert pid_alive(pid)
    starter.kill()
    starter.wait()
    deadline = time.monotonic() + 30  # a bound on the kernel, not a speed check
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = pid_alive(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive


def test_the_embedded_redis_is_bounded_evicts_as_compose_does_and_keeps_its_data_across_a_restart(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", maxmemory="64mb", persist=True)
    server.start()
    try:
        client = redis.Redis(unix_socket_path=str(server.socket))
        config = client.config_get("*")
        assert int(config["maxmemory"]) == 64 * 1024 * 1024 and config["maxmemory-policy"] == "volatile-lru"
        client.set("lp:kept", "yes")
        client.close()
        server.stop()
        server.start()
        client = redis.Redis(unix_socket_path=str(server.socket))
        assert client.get("lp:kept") == b"yes"
        client.close()
    finally:
        server.stop()
    assert (tmp_path / "redis" / "appendonly.aof").exists()


def test_the_default_memory_limit_is_a_quarter_of_the_machine_at_most_2_gib() -> None:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert embedded.default_maxmemory() == min(2 << 30, ram // 4)
