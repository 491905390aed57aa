"""Open-loop load from its own process: requests at a fixed rate for a fixed time, whatever the answers take.
Prints one JSON line: each request's latency (s) and status, in the order sent. Used by bench/load.py.

aiohttp (C HTTP parser) rather than httpx: at a few hundred requests a second of 200 kB answers a pure-Python
client on the same two cores becomes the bottleneck and its own queueing would be measured as latency.

Usage: python -m bench.loadgen URL PATH RATE SECONDS BODIES_JSON_FILE
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp


async def run(url: str, path: str, rate: float, seconds: float, bodies: list[dict[str, object]]) -> dict[str, object]:
    answers: list[tuple[float, str]] = []
    payloads = [json.dumps(body).encode() for body in bodies]
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout, headers=headers) as session:

        async def one(payload: bytes) -> None:
            started = time.perf_counter()
            try:
                async with session.post(path, data=payload) as response:
                    await response.read()
                    code = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                code = type(exc).__name__
            answers.append((time.perf_counter() - started, code))

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(payloads[i % len(payloads)])))
        await asyncio.gather(*tasks)
    return {"answers": answers, "elapsed": time.perf_counter() - start}


def main() -> None:
    url, path, rate, seconds, bodies_file = sys.argv[1:6]
    with open(bodies_file) as fh:
        bodies = json.load(fh)
    print(json.dumps(asyncio.run(run(url, path, float(rate), float(seconds), bodies))))


if __name__ == "__main__":
    main()
