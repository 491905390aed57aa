"""POST /v1/analysis/consistency on the embedded SmolLM2: n samples generated together (one continuous batch in the
worker) against the same n generations asked one after another, and what each similarity adds.
Usage: python -m bench.consistency [--n 10] [--max-tokens 32] [--rounds 3]"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import httpx

from app.launcher.local_service import LocalService

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "Give one reason why the sky is blue. One sentence."}]


def timed(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = client.post(path, json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, dict(response.json())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, max_tokens = args.n, args.max_tokens
    base = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens}
    with LocalService() as service, httpx.Client(base_url=service.base_url, timeout=1800) as client:
        timed(client, "/v1/analysis/consistency", {**base, "n": 2, "seed": 0})  # warm-up
        together, apart, tokens = [], [], []
        for r in range(args.rounds):
            seed = 1000 * (r + 1)  # fresh seeds each round: nothing is cached
            elapsed, answer = timed(client, "/v1/analysis/consistency", {**base, "n": n, "seed": seed})
            together.append(elapsed)
            tokens.append(sum(s["n_tokens"] for s in answer["samples"]))
            started = time.perf_counter()
            timed(client, "/v1/generate", {**base, "temperature": 0.0})
            for i in range(n):
                timed(client, "/v1/generate", {**base, "seed": seed + 500 + i})
            apart.append(time.perf_counter() - started)
        print(f"n={n}, max_tokens={max_tokens}, {args.rounds} rounds; sample tokens per round {tokens}")
        print(f"consistency (lexical, 11 methods): median {statistics.median(together):.1f} s")
        print(f"the same n + 1 generations one after another: median {statistics.median(apart):.1f} s")
        for kind, samples in (("hidden", n), ("entailment", 4)):
            body = {**base, "n": samples, "seed": 7, "similarity": kind}
            elapsed, _ = timed(client, "/v1/analysis/consistency", body)
            print(f"similarity {kind}, n={samples}: {elapsed:.1f} s")


if __name__ == "__main__":
    main()
