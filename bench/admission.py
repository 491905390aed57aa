"""The gateway's cap on requests at work, side by side in one run: for each cap, a fresh service (two gateway
processes, one SmolLM2 worker) takes cached analyses at the sustainable rate and at 3x it, from a second
process on loopback. "64/64" is the admission before the cap (64 requests at once, waiting or working).

Usage: python -m bench.admission [--rate 320] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json

import httpx

from app.launcher.local_service import LocalService
from bench.load import MODEL, step, texts

CAPS = [("16", "256"), ("32", "256"), ("64", "64")]  # (LOGPROBE_MAX_BUSY, LOGPROBE_MAX_INFLIGHT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=320.0, help="the sustainable rate; 3x it is also run")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    print(f"{'busy/all':>9s} {'rate/s':>7s} {'p50 200':>8s} {'p99 200':>8s} {'p99 429':>8s}  statuses")
    for busy, inflight in CAPS:
        env = {"LOGPROBE_WORKER_THREADS": "2", "LOGPROBE_MAX_BUSY": busy, "LOGPROBE_MAX_INFLIGHT": inflight}
        with (
            LocalService(env=env, gateways=2) as service,
            httpx.Client(base_url=service.base_url, timeout=120) as client,
        ):
            text = " ".join(texts(1, "cached")[0].split() * 15)
            rid = client.post("/v1/score", json={"model": MODEL, "text": text}).json()["record_id"]
            for rate in (args.rate, 3 * args.rate):
                result = step(service.base_url, "/v1/analysis/uncertainty", rate, args.seconds, [{"record_id": rid}])
                print(
                    f"{busy + '/' + inflight:>9s} {rate:7.0f} {result['p50'] * 1000:6.0f}ms "  # type: ignore[operator]
                    f"{result['p99'] * 1000:6.0f}ms {result['refused_p99'] * 1000:6.0f}ms "  # type: ignore[operator]
                    f" {json.dumps(result['statuses'])}"
                )


if __name__ == "__main__":
    main()
