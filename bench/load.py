"""Load from a second process on loopback (bounded in count and time): the highest request rate at which p99
stays under 1 s, for cached analyses and for new scoring jobs, and what 3x that rate does (429s from the
bounded queue, no 5xx, worker memory). Usage: python -m bench.load [--seconds 8] [--gateways 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import httpx
import numpy as np

from app.launcher.local_service import LocalService

MODEL = "smollm2-135m-instruct"
WORDS = [
    "harbour",
    "lighthouse",
    "keeper",
    "winter",
    "fishing",
    "boats",
    "bread",
    "quay",
    "lantern",
    "wind",
    "weather",
    "logbook",
    "ninety",
    "steps",
    "polished",
    "lens",
    "captain",
    "ships",
    "slate",
    "sky",
    "white",
    "red",
    "evening",
    "morning",
    "tide",
    "gulls",
    "rope",
    "anchor",
    "sail",
]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def step(url: str, path: str, rate: float, seconds: float, bodies: list[dict[str, object]]) -> dict[str, object]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(bodies, fh)
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", url, path, str(rate), str(seconds), fh.name],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 120,
    )
    answers = json.loads(out.stdout)["answers"]
    statuses: dict[str, int] = {}
    for _, code in answers:
        statuses[code] = statuses.get(code, 0) + 1
    answered = np.array([lat for lat, code in answers if code == "200"])
    refused = np.array([lat for lat, code in answers if code == "429"])
    # Percentiles of the answered requests only; refusals are fast by design and are reported on their own.
    return {
        "sent": len(answers),
        "statuses": statuses,
        "p50": float(np.percentile(answered, 50)) if answered.size else float("nan"),
        "p99": float(np.percentile(answered, 99)) if answered.size else float("nan"),
        "refused_p99": float(np.percentile(refused, 99)) if refused.size else float("nan"),
    }


def texts(n: int, salt: str) -> list[str]:
    """Texts made from a seed that does not change between runs (hash() of a str does, per process)."""
    rng = np.random.default_rng(zlib.crc32(salt.encode()))
    return [f"{salt} {i}: " + " ".join(rng.choice(WORDS, 60)) for i in range(n)]


def sweep(
    name: str, url: str, path: str, rates: list[float], seconds: float, make_bodies: object, worker_pid: int
) -> None:
    best = None
    print(f"\n{name}: {path}")
    head = f"{'rate/s':>7s} {'sent':>6s} {'p50 200':>8s} {'p99 200':>8s} {'p99 429':>8s}"
    print(f"{head}  statuses            worker RSS")
    for rate in rates:
        result = step(url, path, rate, seconds, make_bodies(rate))  # type: ignore[operator]
        ok = result["p99"] < 1.0 and set(result["statuses"]) == {"200"}  # type: ignore[arg-type,operator]
        print(
            f"{rate:7.0f} {result['sent']:6d} {result['p50'] * 1000:6.0f}ms {result['p99'] * 1000:6.0f}ms"  # type: ignore[operator]
            f" {result['refused_p99'] * 1000:6.0f}ms"  # type: ignore[operator]
            f"  {json.dumps(result['statuses']):18s}  {rss_mb(worker_pid):6.0f} MB"
        )
        if not ok:
            break
        best = rate
    if best is None:
        print("  no rate kept p99 under 1 s")
        return
    result = step(url, path, 3 * best, seconds, make_bodies(3 * best))  # type: ignore[operator]
    print(
        f"sustained: {best:.0f}/s with p99 < 1 s. At 3x ({3 * best:.0f}/s): p50/p99 of 200s "  # type: ignore[operator]
        f"{result['p50'] * 1000:.0f}/{result['p99'] * 1000:.0f} ms, p99 of 429s {result['refused_p99'] * 1000:.0f} ms, "  # type: ignore[operator]
        f"statuses {json.dumps(result['statuses'])}, worker RSS {rss_mb(worker_pid):.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes (uvicorn workers)")
    args = parser.parse_args()
    env = {"LOGPROBE_WORKER_THREADS": "2", "LOGPROBE_MAX_QUEUE_DEPTH": "8"}
    with (
        LocalService(env=env, gateways=args.gateways) as service,
        httpx.Client(base_url=service.base_url, timeout=120) as client,
    ):
        worker_pid = service.workers[0].pid
        print(f"worker RSS at start: {rss_mb(worker_pid):.0f} MB; queue depth limit 8; {args.gateways} gateway(s)")
        record = client.post("/v1/score", json={"model": MODEL, "text": " ".join(texts(1, "cached")[0].split() * 15)})
        rid = record.json()["record_id"]
        print(f"cached record: {record.json()['n_tokens']} tokens")
        sweep(
            "cached analyses (uncertainty, all methods, per-token values)",
            service.base_url,
            "/v1/analysis/uncertainty",
            [10, 20, 40, 80, 160, 320],
            args.seconds,
            lambda rate: [{"record_id": rid}],
            worker_pid,
        )
        counter = iter(range(10**6))
        sweep(
            "new scoring jobs (~70-token texts, each new)",
            service.base_url,
            "/v1/score",
            [1, 2, 4, 8, 16],
            args.seconds,
            lambda rate: [
                {"model": MODEL, "text": t} for t in texts(int(rate * args.seconds) + 1, f"run{next(counter)}")
            ],
            worker_pid,
        )


if __name__ == "__main__":
    main()
