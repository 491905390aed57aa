"""Stored bytes per position of a record vs a float32 full row, for the packaged models; exactness checked.

Runs the worker's own capture-and-store path into a real Redis and reads back what was stored.
Usage: python bench/storage.py [--tokens 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import redis
import torch
from safetensors.numpy import load

from app.launcher.embedded import EmbeddedRedis
from bench.texts import text_of_tokens
from workers.backends.hf import HFBackend
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.contract.jobs import RowsJob, ScoreJob
from workers.contract.keys import export_key, record_key
from workers.handlers.base import Context
from workers.handlers.registry import run_job
from workers.probe import verify_rebuild

WINDOW = 64  # positions per export, as a client pages through a long record


@contextlib.contextmanager
def bench_redis() -> Iterator[redis.Redis]:
    """A private Redis server for a bench run, stopped at the end."""
    server = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis")
    try:
        yield redis.Redis.from_url(server.start())
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data_dir = CommonSettings().data_dir
    with bench_redis() as client:
        measure(client, data_dir, args.tokens)


def measure(client: redis.Redis, data_dir: Path, tokens: int) -> None:
    print(
        f"{'model':24s} {'V':>8s} {'d':>5s} {'positions':>9s} {'bytes/pos':>10s} {'f32 row':>10s} "
        f"{'smaller':>8s} {'V/d':>6s} {'max|Δ| rebuilt vs model':>24s}"
    )
    for m, name in enumerate(("smollm2-135m-instruct", "gemma-3-270m")):
        backend = HFBackend(PACKAGED_MODELS[name], data_dir)
        verify_rebuild(backend, backend.encode("A short probe text for the rebuild check."))
        card = backend.card
        ids = backend.encode(text_of_tokens(tokens, backend.encode))
        ctx = Context.build(client, {name: backend}, b"bench", 3600)
        common = {"tenant": "bench", "model": name, "fingerprint": card.fingerprint, "record_id": f"{m:032x}"}
        run_job(ScoreJob(job_id="s", token_ids=ids, **common), ctx)
        key = record_key("bench", common["record_id"])
        stored = sum(int(client.hstrlen(key, field)) for field in client.hkeys(key))
        positions = len(ids) - 1
        per_position = stored / positions
        row = 4 * card.vocab_size
        # exactness: rows rebuilt from the stored record vs the model's own forward pass
        reference = backend.reference_logprobs(ids)[:-1]
        error = 0.0
        for start in range(1, len(ids), WINDOW):
            stop = min(start + WINDOW, len(ids))
            run_job(RowsJob(job_id="x", start=start, stop=stop, **common), ctx)
            rows = torch.from_numpy(load(client.get(export_key("x")))["logprobs"])
            error = max(error, float((rows - reference[start - 1 : stop - 1]).abs().max()))
        print(
            f"{name:24s} {card.vocab_size:8d} {card.hidden_size:5d} {positions:9d} {per_position:10.0f} "
            f"{row:10d} {row / per_position:7.1f}x {card.vocab_size / card.hidden_size:5.0f}x {error:24.2e}"
        )
        del backend, ctx


if __name__ == "__main__":
    main()
