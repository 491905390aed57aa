"""Scoring throughput with 1, 2 and 3 workers on one Redis Cluster (3 masters, 3 replicas), side by side in one run.

Each worker is pinned with `taskset` to one core of those this process may use (worker i to core i mod n, one torch
thread each), so a worker is one core's share: with fewer cores than workers, workers share cores and the figures
say so. The gateway and the cluster run unpinned. Every configuration scores its own fresh texts (no cache hits)
from `concurrency` clients at once; throughput is positions scored per second of wall time.
Usage: python -m bench.cluster_scaling [--texts 32] [--tokens 150] [--concurrency 16] [--workers 1,2,3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from app.launcher.cluster import EmbeddedCluster
from app.launcher.local_service import LocalService
from bench.texts import text_of_tokens

MODEL = "smollm2-135m-instruct"


def measure(cluster: EmbeddedCluster, n_workers: int, texts: list[str], concurrency: int) -> dict[str, object]:
    cores = sorted(os.sched_getaffinity(0))
    pins = [cores[i % len(cores)] for i in range(n_workers)]
    env = {"LOGPROBE_WORKER_THREADS": "1", "LOGPROBE_MAX_QUEUE_DEPTH": str(4 * len(texts))}
    prefixes = [["taskset", "-c", str(core)] for core in pins]
    service = LocalService(env=env, workers=n_workers, redis_url=cluster.url, worker_prefixes=prefixes)
    with service, httpx.Client(base_url=service.base_url, timeout=600) as client:
        client.post("/v1/score", json={"model": MODEL, "text": f"warm-up for {n_workers} workers"})

        def score(text: str) -> int:
            response = client.post("/v1/score", json={"model": MODEL, "text": text})
            response.raise_for_status()
            return int(response.json()["n_tokens"]) - 1

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            positions = sum(pool.map(score, texts))
        seconds = time.perf_counter() - started
    return {
        "workers": n_workers,
        "cores": pins,
        "requests": len(texts),
        "positions": positions,
        "seconds": round(seconds, 2),
        "positions_per_s": round(positions / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=150)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", default="1,2,3")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    cluster = EmbeddedCluster(Path(tempfile.mkdtemp(prefix="lp-cluster-")) / "cluster").start()
    try:
        rows = []
        for n in counts:
            texts = [
                text_of_tokens(args.tokens, lambda t: t.split(), salt=f"scaling {n} {i} {time.time_ns()}.")
                for i in range(args.texts)
            ]
            rows.append(measure(cluster, n, texts, args.concurrency))
    finally:
        cluster.stop()
    base = float(rows[0]["positions_per_s"])  # type: ignore[arg-type]
    for row in rows:
        row["vs_first"] = round(float(row["positions_per_s"]) / base, 2)  # type: ignore[arg-type]
    print(json.dumps({"cpu_cores": len(os.sched_getaffinity(0)), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
