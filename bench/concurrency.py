"""Scoring and generation under concurrency, side by side in one run.

Scoring: `/v1/score` (full distributions kept) on the vLLM backend against vLLM's own OpenAI server
(`python -m vllm.entrypoints.openai.api_server`, same model, same machine) answering `prompt_logprobs=1`; and
`/v1/score` on the transformers backend against a bare batched transformers forward over the same texts.
Generation: `/v1/generate` (greedy, the whole record kept) on the vLLM backend against the same vLLM server
generating with `logprobs=20`, and `/v1/chat/completions` with `logprobs` (top 20) on both.

All servers are up for the whole run and measured in turns (one at a time), each request a new text (no cache
hits); a level sends max(--requests, concurrency) requests: tokens scored (or generated) per second over its wall
time.

Usage: python -m bench.concurrency [--levels 1 4 16 64] [--tokens 100 1000] [--requests 16] [--generate 64]
       [--generate-levels 1 4 16 64]
       [--dtype auto|bfloat16|float16|float32] [--skip-hf | --skip-vllm] [--generation-capture engine|prefill]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.launcher.local_service import ROOT, LocalService, free_port
from bench.texts import text_of_tokens
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.lifecycle import die_with_parent
from workers.models import safetensors_dir

MODEL = "smollm2-135m-instruct"
KV_BYTES = 1 << 30
LOGITS_BYTES = 2 << 30  # the bare forward's logits at once
GENERATE_PROMPT = 100  # tokens of each generation's prompt
# 16 entries per read; the gateway admits every request of the highest level (its default sheds load at 32
# requests at work at once, which 64 simultaneous arrivals can pass while they are tokenized)
SERVICE_ENV = {"LOGPROBE_WORKER_BATCH_JOBS": "16", "LOGPROBE_MAX_BUSY": "256"}


async def level(send: Callable[[int], Awaitable[int]], n: int, concurrency: int) -> float:
    """Tokens per second for n requests, at most `concurrency` at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with gate:
            return await send(i)

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(tokens) / (time.perf_counter() - started)


def start_vllm_server(folder: str, port: int, log: Any, *options: str) -> subprocess.Popen[bytes]:
    """vLLM's own OpenAI server on the same model folder (eager, a fixed KV cache), with more `options`."""
    args = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        folder,
        "--served-model-name",
        MODEL,
        "--port",
        str(port),
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(KV_BYTES),
        *options,
    ]
    return subprocess.Popen(  # dies with the bench (a bench killed outright left it running)
        args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy(), preexec_fn=die_with_parent
    )


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


async def main_async(args: argparse.Namespace) -> None:
    folder, _ = safetensors_dir(PACKAGED_MODELS[MODEL], CommonSettings().data_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text).input_ids)

    sizes = [max(args.requests, c) for c in args.levels]
    texts = {
        n: [text_of_tokens(n, encode, salt=f"r{r}-{i}") for r in range(len(args.levels)) for i in range(sizes[r])]
        for n in args.tokens
    }
    args.generate_levels = args.generate_levels or args.levels
    gen_sizes = [max(args.requests, c) for c in args.generate_levels]
    generation_prompts = [
        text_of_tokens(GENERATE_PROMPT, encode, salt=f"g{r}-{i}")
        for r in range(len(args.generate_levels))
        for i in range(gen_sizes[r])
    ]
    ids = {n: [encode(t) for t in ts] for n, ts in texts.items()}
    engine = {"max_model_len": 4096, "kv_cache_memory_bytes": KV_BYTES}
    spec = {
        "name": MODEL,
        "backend": "vllm",
        "dtype": args.dtype,
        "engine": engine,
        "generation_capture": args.generation_capture,
    }
    port = free_port()
    (ROOT / "artifacts").mkdir(exist_ok=True)
    with (
        open(ROOT / "artifacts" / "vllm-serve.log", "ab") as serve_log,
        LocalService(env={"LOGPROBE_MODELS": json.dumps([spec]), **SERVICE_ENV})
        if not args.skip_vllm
        else nullcontext() as ours,
        LocalService(env={"LOGPROBE_WORKER_THREADS": "2", **SERVICE_ENV})
        if not args.skip_hf
        else nullcontext() as ours_hf,
    ):
        options = ["--max-model-len", "4096", "--max-logprobs", "20", "--dtype", args.dtype]
        server = start_vllm_server(str(folder), port, serve_log, *options) if ours is not None else None
        try:
            if ours is not None and server is not None:
                wait_up(f"http://127.0.0.1:{port}/health", server)
                card = httpx.get(f"{ours.base_url}/v1/models").json()["data"][0]
                print(
                    f"vLLM backend: dtype {card['dtype']}, storage {card['storage']}; vllm serve: the same folder, "
                    f"--dtype {args.dtype}"
                )
            async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=128)) as client:
                print(
                    f"{'tokens':>6s} {'conc':>5s} {'ours vLLM':>10s} {'vllm serve':>11s} {'ratio':>6s}"
                    f" {'ours hf':>8s} {'bare hf':>8s} {'ratio':>6s}   (tokens/s)"
                )
                for n in args.tokens:
                    for r, c in enumerate(args.levels):
                        batch = list(range(sum(sizes[:r]), sum(sizes[: r + 1])))
                        scored = [{"model": MODEL, "text": texts[n][i]} for i in batch]
                        prompts = [
                            {"model": MODEL, "prompt": ids[n][i], "max_tokens": 1, "prompt_logprobs": 1} for i in batch
                        ]
                        vllm_url = f"http://127.0.0.1:{port}/v1/completions"
                        ours_rate = theirs_rate = hf_rate = bare_rate = float("nan")
                        if ours is not None:
                            ours_rate = await level(partial(score, client, ours.base_url, scored), len(batch), c)
                            theirs_rate = await level(partial(complete, client, vllm_url, prompts), len(batch), c)
                        if ours_hf is not None:
                            hf_rate = await level(partial(score, client, ours_hf.base_url, scored), len(batch), c)
                            bare_rate = bare_forward(folder, [ids[n][i] for i in batch], c)
                        print(
                            f"{n:6d} {c:5d} {ours_rate:10.0f} {theirs_rate:11.0f} {ours_rate / theirs_rate:5.2f}x"
                            f" {hf_rate:8.0f} {bare_rate:8.0f} {hf_rate / bare_rate:5.2f}x",
                            flush=True,
                        )
                if args.generate and ours is not None:
                    await generation(
                        client, ours.base_url, f"http://127.0.0.1:{port}", generation_prompts, gen_sizes, args
                    )
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=60)


async def generation(
    client: httpx.AsyncClient, ours: str, theirs: str, prompts: list[str], sizes: list[int], args: Any
) -> None:
    """Greedy generation of up to --generate tokens after a ~100-token prompt: ours (the record kept) against vLLM's
    server returning the top 20 logprobs of each generated token; then the same prompts as chat messages through
    both servers' `/v1/chat/completions` with `logprobs` and `top_logprobs: 20`."""
    print(
        f"{'new':>6s} {'conc':>5s} {'ours vLLM':>10s} {'vllm serve':>11s} {'ratio':>6s}"
        f" {'ours chat':>10s} {'serve chat':>11s} {'ratio':>6s}   (generated tokens/s)"
    )
    for r, c in enumerate(args.generate_levels):
        batch = prompts[sum(sizes[:r]) : sum(sizes[: r + 1])]
        common = {"model": MODEL, "max_tokens": args.generate, "temperature": 0.0}
        ours_bodies = [{**common, "prompt": t} for t in batch]
        their_bodies = [{**common, "prompt": t, "logprobs": 20} for t in batch]
        chats = [
            {**common, "messages": [{"role": "user", "content": t}], "logprobs": True, "top_logprobs": 20}
            for t in batch
        ]
        ours_rate = await level(partial(generated, client, f"{ours}/v1/generate", ours_bodies), len(batch), c)
        theirs_rate = await level(partial(generated, client, f"{theirs}/v1/completions", their_bodies), len(batch), c)
        chat_rate = await level(partial(generated, client, f"{ours}/v1/chat/completions", chats), len(batch), c)
        their_chat = await level(partial(generated, client, f"{theirs}/v1/chat/completions", chats), len(batch), c)
        print(
            f"{args.generate:6d} {c:5d} {ours_rate:10.0f} {theirs_rate:11.0f} {ours_rate / theirs_rate:5.2f}x"
            f" {chat_rate:10.0f} {their_chat:11.0f} {chat_rate / their_chat:5.2f}x",
            flush=True,
        )


async def generated(client: httpx.AsyncClient, url: str, bodies: list[dict[str, Any]], i: int) -> int:
    answer = await client.post(url, json=bodies[i])
    if answer.status_code >= 400:
        raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:500]}")
    return int(answer.json()["usage"]["completion_tokens"])


async def score(client: httpx.AsyncClient, base: str, bodies: list[dict[str, Any]], i: int) -> int:
    answer = await client.post(f"{base}/v1/score", json=bodies[i])
    answer.raise_for_status()
    return int(answer.json()["n_tokens"])


async def complete(client: httpx.AsyncClient, url: str, bodies: list[dict[str, Any]], i: int) -> int:
    """vLLM's server scoring a prompt: one new token, and the prompt's logprobs (top-1)."""
    answer = await client.post(url, json=bodies[i])
    answer.raise_for_status()
    return len(bodies[i]["prompt"])


_MODEL: Any = None


def bare_forward(folder: Any, sequences: list[list[int]], batch: int) -> float:
    """Tokens per second of transformers' own forward over the sequences, `batch` at a time (right-padded; fewer
    where the batch's logits would pass LOGITS_BYTES, as anyone running it on this machine would)."""
    global _MODEL
    if _MODEL is None:
        torch.set_num_threads(2)
        _MODEL = AutoModelForCausalLM.from_pretrained(folder).eval()
    started = time.perf_counter()
    # the logits of a batch are batch x width x V floats (64 x 1,000 x 49,152: 12.6 GB): at most LOGITS_BYTES at once
    step = max(1, min(batch, LOGITS_BYTES // (4 * max(len(s) for s in sequences) * _MODEL.config.vocab_size)))
    with torch.inference_mode():
        for lo in range(0, len(sequences), step):
            group = sequences[lo : lo + step]
            width = max(len(s) for s in group)
            ids = torch.tensor([s + [0] * (width - len(s)) for s in group])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in group])
            _MODEL(input_ids=ids, attention_mask=mask)
    return sum(len(s) for s in sequences) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--tokens", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--generate", type=int, default=64, help="new tokens per generation (0: skip)")
    parser.add_argument("--dtype", default="auto", help="both vLLM engines' dtype (auto: what vLLM picks)")
    parser.add_argument("--skip-hf", action="store_true", help="no transformers-backend columns")
    parser.add_argument(
        "--skip-vllm", action="store_true", help="no vLLM columns (no engines beside the transformers cells)"
    )
    parser.add_argument("--generate-levels", type=int, nargs="*", default=None, help="default: --levels")
    parser.add_argument(
        "--generation-capture",
        choices=["engine", "prefill"],
        default="engine",
        help="where the vLLM backend's generation records come from (the model spec's generation_capture)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
