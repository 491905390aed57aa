"""`logprobe serve`'s private Redis is bounded and durable: a memory limit from its setting, compose's eviction
policy, and an append-only file in its folder, so a restarted `serve` answers with the heads, tables and records it
made before. The folder is a temporary one here (LOGPROBE_EMBEDDED_REDIS_DIR), never the real home."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

from app.launcher.local_service import ROOT, free_port, wait_ready
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL

TEXTS = [
    ("The committee met on Tuesday and adjourned without a vote on the budget.", 0),
    ("As an AI language model, I can certainly help you with that request today.", 1),
    ("Rain fell on the harbour all night; by morning the boats sat low and grey.", 0),
    ("Certainly! Here is a concise summary of the key points you asked about.", 1),
    ("My grandmother kept her buttons in a biscuit tin that smelled of cloves.", 0),
    ("I hope this helps! Let me know if you have any other questions at all.", 1),
    ("The ferry was late again, so we ate chips on the sea wall and waited.", 0),
    ("In conclusion, there are several important factors to consider here.", 1),
    ("The plumber arrived at noon with the wrong washer and a very good story.", 0),
    ("Great question! There are many ways to approach this, depending on your goals.", 1),
]


@contextmanager
def serve(port: int, redis_dir: Path, log_name: str) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LOGPROBE_REDIS_URL", "LOGPROBE_API_KEYS")}
    env.update(
        {
            "LOGPROBE_DATA_DIR": str(DATA_DIR),  # the converted model, shared with the other tests
            "LOGPROBE_EMBEDDED_REDIS_DIR": str(redis_dir),
            "LOGPROBE_EMBEDDED_REDIS_MAXMEMORY": "256mb",
            "PYTHONPATH": str(ROOT),
        }
    )
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / log_name).open("wb") as log:
        cli = [sys.executable, "-m", "app.launcher.cli", "serve", "--port", str(port)]
        proc = subprocess.Popen(cli, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, [proc])
            yield base
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0


def wait_head(base: str, head_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        head: dict[str, Any] = httpx.get(f"{base}/v1/heads/{head_id}", timeout=30).json()
        if head["status"] in ("succeeded", "failed"):
            return head
        time.sleep(0.3)
    raise TimeoutError(head_id)


def test_a_restarted_serve_answers_with_the_heads_tables_and_records_it_made_before(tmp_path: Path) -> None:
    port, redis_dir = free_port(), tmp_path / "redis"
    text = TEXTS[1][0]
    with serve(port, redis_dir, "serve-storage-1.log") as base:
        server = redis.Redis(unix_socket_path=str(redis_dir / str(port) / "redis.sock"))
        config = server.config_get("*")
        server.close()
        assert int(config["maxmemory"]) == 256 * 1024 * 1024 and config["maxmemory-policy"] == "volatile-lru"
        assert config["appendonly"] == "yes" and Path(config["dir"]) == redis_dir / str(port)

        examples = [{"text": t, "label": label} for t, label in TEXTS]
        body = {"model": MODEL, "name": "kept", "family": "detect", "kind": "los", "seed": 1, "examples": examples}
        submitted = httpx.post(f"{base}/v1/heads", json=body, timeout=120)
        assert submitted.status_code == 202, submitted.text
        head = wait_head(base, submitted.json()["id"])
        assert head["status"] == "succeeded", head
        table = httpx.put(f"{base}/v1/frequency-tables/kept", json={"model": MODEL, "texts": [t for t, _ in TEXTS]})
        assert table.status_code == 200, table.text
        detect = httpx.post(
            f"{base}/v1/analysis/detect", json={"model": MODEL, "text": text, "heads": [head["id"]]}, timeout=120
        ).json()

    with serve(port, redis_dir, "serve-storage-2.log") as base:
        again = httpx.get(f"{base}/v1/heads/{head['id']}", timeout=30).json()
        assert again["status"] == "succeeded" and again["metrics"] == head["metrics"]
        assert [h["id"] for h in httpx.get(f"{base}/v1/heads", timeout=30).json()["data"]] == [head["id"]]
        kept = httpx.get(f"{base}/v1/frequency-tables/kept", params={"model": MODEL}, timeout=30)
        assert kept.status_code == 200 and kept.json()["tokens"] == table.json()["tokens"]
        used = httpx.post(
            f"{base}/v1/analysis/detect", json={"model": MODEL, "text": text, "heads": [head["id"]]}, timeout=120
        ).json()
        assert used["cached"] is True  # the record is there too, under the same secret
        assert used["sequence"]["kept"] == detect["sequence"]["kept"]
