"""The README's first command: `logprobe serve` starts Redis, a worker and the gateway (open to this machine
without API keys); Ctrl-C stops all. On any other address it needs keys or an explicit opt-in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.launcher.local_service import ROOT, free_port, wait_ready
from app.platform.settings import CLOSED_MESSAGE
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL


def test_serve_runs_the_embedded_default_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LOGPROBE_REDIS_URL", "LOGPROBE_API_KEYS")}
    env.update({"LOGPROBE_DATA_DIR": str(DATA_DIR), "PYTHONPATH": str(ROOT)})
    env["LOGPROBE_EMBEDDED_REDIS_DIR"] = str(tmp_path)  # its append-only file too: never the real home
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.launcher.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, [proc])
            body = httpx.post(
                f"{base}/v1/score", json={"model": MODEL, "text": "Embedded default works."}, timeout=120
            ).json()
            assert body["tokens"][1]["logprob"] < 0
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
    socket = tmp_path / str(port) / "redis.sock"
    assert not socket.exists()
    leftovers = subprocess.run(["pgrep", "-f", f"{tmp_path}/{port}/redis"], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""


def test_serve_on_a_public_address_without_keys_refuses_in_one_line(tmp_path: Path) -> None:
    """Production defaults are closed: no keys and no LOGPROBE_ALLOW_ANONYMOUS on 0.0.0.0 is one error line."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LOGPROBE_REDIS_URL", "LOGPROBE_API_KEYS")}
    env.update({"LOGPROBE_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)})
    env.pop("LOGPROBE_ALLOW_ANONYMOUS", None)
    cli = [
        sys.executable,
        "-m",
        "app.launcher.cli",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--workers",
        "0",
    ]
    done = subprocess.run(cli, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if "refusing to start" in x]
    assert line == f"{CLOSED_MESSAGE} (binding 0.0.0.0, not a loopback address)" or line == CLOSED_MESSAGE
    assert "Traceback" not in done.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


KILLED_OUTRIGHT = """
import json, sys, time
from app.launcher.local_service import LocalService
service = LocalService(env={"LOGPROBE_DATA_DIR": sys.argv[1]}, log_dir=__import__("pathlib").Path(sys.argv[2])).start()
pids = [service.gateway.pid, *(w.pid for w in service.workers), service.redis.process.pid]
print(json.dumps(pids), flush=True)
time.sleep(600)
"""


def test_a_service_whose_starter_is_killed_outright_leaves_nothing_running() -> None:
    """A test run or bench killed with SIGKILL cannot clean up: its gateway, workers and Redis go with it."""
    starter = subprocess.Popen(
        [sys.executable, "-c", KILLED_OUTRIGHT, str(DATA_DIR), str(ARTIFACTS / "killed-outright")],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert starter.stdout is not None
    pids = json.loads(starter.stdout.readline())
    assert len(pids) == 3 and all(pid_alive(pid) for pid in pids)
    starter.kill()
    starter.wait()
    deadline = time.monotonic() + 30  # a bound on the kernel, not a speed check
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if pid_alive(pid)]


def pid_alive(pid: int) -> bool:
    """Running and not a zombie (a killed child of a killed parent is reaped by init, not by us)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
