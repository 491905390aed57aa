"""Open-loop load from its own process: requests at a fixed rate for a fixed time, whatever the answers take.
Prints one JSON line: latencies (s) and status codes. Used by bench/load.py.

Usage: python -m bench.loadgen URL PATH RATE SECONDS BODIES_JSON_FILE
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx


async def run(url: str, path: str, rate: float, seconds: float, bodies: list[dict[str, object]]) -> dict[str, object]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(body: dict[str, object]) -> None:
            started = time.perf_counter()
            try:
                code = str((await client.post(path, json=body)).status_code)
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            latencies.append(time.perf_counter() - started)
            statuses[code] = statuses.get(code, 0) + 1

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
        await asyncio.gather(*tasks)
    return {"latencies": latencies, "statuses": statuses, "elapsed": time.perf_counter() - start}


def main() -> None:
    url, path, rate, seconds, bodies_file = sys.argv[1:6]
    with open(bodies_file) as fh:
        bodies = json.load(fh)
    print(json.dumps(asyncio.run(run(url, path, float(rate), float(seconds), bodies))))


if __name__ == "__main__":
    main()
