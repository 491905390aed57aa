"""Contrastive decoding under concurrency, on the embedded default (transformers, SmolLM2): generated tokens per
second of `/v1/decode/contrastive` (preset `prompt_contrast`: the chat view against the bare prompt, greedy) at
each concurrency, against concurrency 1 in the same run — what every level got before decodings of different
requests shared a batch (each ran alone, one after another).

Usage: python -m bench.contrast_concurrency [--levels 1 4 8 16] [--requests 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
from functools import partial
from typing import Any

import httpx

from app.launcher.local_service import LocalService
from bench.concurrency import MODEL, SERVICE_ENV, level


async def decoded(client: httpx.AsyncClient, url: str, bodies: list[dict[str, Any]], i: int) -> int:
    answer = await client.post(url, json=bodies[i])
    if answer.status_code >= 400:
        raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:500]}")
    return len(answer.json()["steps"])


async def main_async(args: argparse.Namespace) -> None:
    with LocalService(env={"LOGPROBE_WORKER_THREADS": "2", **SERVICE_ENV}) as service:
        url = f"{service.base_url}/v1/decode/contrastive"
        preset = {"name": "prompt_contrast", "model": MODEL, "alpha": 0.5}
        async with httpx.AsyncClient(timeout=600) as client:
            print(f"{'conc':>5s} {'requests':>9s} {'tokens/s':>9s} {'vs conc 1':>10s}   (generated tokens per second)")
            first = None
            for r, c in enumerate(args.levels):
                n = max(args.requests, c)
                bodies = [
                    {
                        "prompt": f"Write a short note about topic {r}-{i}: rivers, bridges and towns between them.",
                        "preset": preset,
                        "max_tokens": args.tokens,
                        "temperature": 0,
                    }
                    for i in range(n)
                ]
                rate = await level(partial(decoded, client, url, bodies), n, c)
                first = first or rate
                print(f"{c:5d} {n:9d} {rate:9.1f} {rate / first:9.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
