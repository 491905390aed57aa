"""Latency of each analysis family over HTTP on a cached 1,000-token record (all of the family's methods,
per-token values included). Usage: python -m bench.analysis_latency [--requests 40]"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
import redis
from tokenizers import Tokenizer

from app.launcher.local_service import LocalService
from bench.texts import text_of_tokens
from workers.contract.cards import ModelCard
from workers.contract.keys import card_key, tokenizer_key

MODEL = "smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    with LocalService(env={"LOGPROBE_WORKER_THREADS": "2"}) as service, httpx.Client(timeout=600) as client:
        r = redis.Redis.from_url(service.redis_url)
        card = ModelCard.model_validate_json(r.get(card_key(MODEL)) or b"")
        tokenizer = Tokenizer.from_str((r.get(tokenizer_key(card.fingerprint)) or b"").decode())
        text = text_of_tokens(1000, lambda t: tokenizer.encode(t).ids)
        scored = client.post(f"{service.base_url}/v1/score", json={"model": MODEL, "text": text}).json()
        print(f"record of {scored['n_tokens']} tokens; {args.requests} requests per family after 3 warm-ups")
        print(f"{'family':12s} {'p50':>8s} {'p95':>8s} {'methods':>8s}")
        for family in ("uncertainty", "detect", "membership"):
            times = []
            for i in range(args.requests + 3):
                started = time.perf_counter()
                response = client.post(
                    f"{service.base_url}/v1/analysis/{family}", json={"record_id": scored["record_id"]}
                )
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                if i >= 3:
                    times.append(elapsed)
            times.sort()
            p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
            n_methods = len(response.json()["methods"])
            print(f"{family:12s} {statistics.median(times) * 1000:6.1f}ms {p95 * 1000:6.1f}ms {n_methods:8d}")


if __name__ == "__main__":
    main()
