"""A whole deployment on this machine, as separate processes: for tests and benchmarks.

A private Redis, worker processes (`python -m workers`) and the gateway (uvicorn) on a free port; the same
processes `logprobe serve` runs, but each one observable and stoppable on its own. Given no API keys, the
gateway lets anonymous callers in (LOGPROBE_ALLOW_ANONYMOUS), as `logprobe serve` does on a loopback address.
Every process dies with the one that started the service (the kernel's parent-death signal), so a test run or
a bench that is killed outright leaves nothing running.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from app.launcher.embedded import EmbeddedRedis
from app.platform.connections import HTTP_PROTOCOL
from app.platform.settings import KEEP_ALIVE_S
from workers.lifecycle import die_with_parent

ROOT = Path(__file__).resolve().parents[2]
KEY_SETTINGS = ("LOGPROBE_API_KEYS", "LOGPROBE_API_KEYS_FILE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base_url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} not ready after {timeout_s}s")


class LocalService:
    """The whole deployment; with `redis_url` it uses that Redis (a cluster, say) instead of a private one, and
    with `worker_prefixes` worker i runs behind prefix i (e.g. `ip netns exec NAME`: a worker on its own host)."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        workers: int = 1,
        gateways: int = 1,
        redis_url: str | None = None,
        worker_prefixes: list[list[str]] | None = None,
    ) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="logprobe-"))
        self.log_dir = log_dir or self.tmp
        self.redis = EmbeddedRedis(self.tmp / "redis")
        self.external_redis = redis_url
        self.worker_prefixes = worker_prefixes or []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.n_workers = workers
        self.n_gateways = gateways
        self.workers: list[subprocess.Popen[bytes]] = []
        self.gateway: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / log_name).open("ab") as log:
            return subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=die_with_parent
            )

    def start_worker(self) -> subprocess.Popen[bytes]:
        i = len(self.workers)
        prefix = self.worker_prefixes[i] if i < len(self.worker_prefixes) else []
        worker = self._spawn([*prefix, sys.executable, "-m", "workers"], f"worker{i}.log")
        self.workers.append(worker)
        return worker

    def start(self) -> LocalService:
        url = self.external_redis or self.redis.start()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **self.extra_env, "REDIS_URL": url}
        # no keys: anonymous callers, and the gateway binds 127.0.0.1, so only this machine's
        if all(self.env.get(k, "") in ("", "{}") for k in KEY_SETTINGS):
            self.env.setdefault("LOGPROBE_ALLOW_ANONYMOUS", "true")
        if self.n_gateways > 1:  # uvicorn worker processes; their metrics meet in one folder
            (self.tmp / "metrics").mkdir()
            self.env["PROMETHEUS_MULTIPROC_DIR"] = str(self.tmp / "metrics")
        for _ in range(self.n_workers):
            self.start_worker()
        self.start_gateway()
        return self

    def start_gateway(self) -> None:
        """Start the gateway (again, after kill_gateway) and wait until it is ready."""
        self.gateway = self._spawn(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.api.gateway:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--workers",
                str(self.n_gateways),
                "--timeout-keep-alive",
                str(KEEP_ALIVE_S),
                "--http",
                HTTP_PROTOCOL,  # as `logprobe serve` runs it
            ],
            "gateway.log",
        )
        wait_ready(self.base_url, [self.gateway, *self.workers])

    def kill_gateway(self) -> None:
        """kill -9 the gateway: what it was doing is left as a crash leaves it."""
        if self.gateway is not None:
            self.gateway.kill()
            self.gateway.wait()

    @property
    def redis_url(self) -> str:
        return self.external_redis or self.redis.url

    def stop(self) -> None:
        for proc in [*([self.gateway] if self.gateway else []), *self.workers]:
            proc.terminate()
        for proc in [*([self.gateway] if self.gateway else []), *self.workers]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.external_redis is None:
            self.redis.stop()

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()
