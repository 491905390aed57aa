"""The README's first command: `logprobe serve` starts Redis, a worker and the gateway (open to this machine
without API keys); Ctrl-C stops all. On any other address it needs keys or an explicit opt-in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
    socket = DATA_DIR / "redis" / str(port) / "redis.sock"
    assert not socket.exists()
    leftovers = subprocess.run(["pgrep", "-f", f"redis/{port}/redis"], capture_output=True, text=True).stdout
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
