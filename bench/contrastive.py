"""Contrastive decoding speed: our worker loop (in process, and end to end over HTTP) against the reference
implementation's pattern — two HF models stepped together with their KV caches, logits combined in Python —
on the packaged SmolLM2 with the prompt-contrast preset (chat template vs raw prompt), greedy, side by side.

Usage: python -m bench.contrastive [--tokens 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import httpx
import torch
from transformers import DynamicCache

from app.launcher.local_service import LocalService
from workers.backends.hf import HFBackend
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.contract.jobs import Sampling
from workers.decoding import View, decode

MODEL = "smollm2-135m-instruct"
PROMPT = "Describe a harbour town at dawn."
ALPHA = 0.5


@torch.inference_mode()
def reference_pattern(model: torch.nn.Module, prefixes: list[list[int]], weights: list[float], n: int) -> list[int]:
    """The ED reference code's loop: each model keeps its cache; logits are combined in Python."""
    caches = [DynamicCache(config=model.config) for _ in prefixes]
    logits = [
        model(input_ids=torch.tensor([p]), past_key_values=c, use_cache=True).logits[0, -1]
        for p, c in zip(prefixes, caches, strict=True)
    ]
    out = []
    for _ in range(n):
        score = sum(w * torch.log_softmax(lg.float(), -1) for w, lg in zip(weights, logits, strict=True))
        token = int(torch.argmax(score))
        out.append(token)
        logits = [
            model(input_ids=torch.tensor([[token]]), past_key_values=c, use_cache=True).logits[0, -1] for c in caches
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    backend = HFBackend(PACKAGED_MODELS[MODEL], CommonSettings().data_dir)
    chat = backend.tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    prefixes, weights = [list(chat), backend.encode(PROMPT)], [1 + ALPHA, -ALPHA]
    forward_time = 0.0
    start, step = backend.start, backend.step

    def timed(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def run(*args: object) -> torch.Tensor:
            nonlocal forward_time
            began = time.perf_counter()
            try:
                return fn(*args)
            finally:
                forward_time += time.perf_counter() - began

        return run

    backend.start, backend.step = timed(start), timed(step)  # type: ignore[method-assign]
    sampling = Sampling(max_tokens=args.tokens, temperature=0.0, top_p=1.0)
    views = [View(backend, p, w) for p, w in zip(prefixes, weights, strict=True)]
    ref_t, ours_t, overhead = [], [], []
    for _ in range(args.reps):
        started = time.perf_counter()
        expected = reference_pattern(backend.model, prefixes, weights, args.tokens)
        ref_t.append(time.perf_counter() - started)
        forward_time = 0.0
        started = time.perf_counter()
        ours = decode(views, sampling, topk=5, eos_ids=set())
        ours_t.append(time.perf_counter() - started)
        overhead.append(1 - forward_time / ours_t[-1])
        assert ours.completion == expected, "greedy tokens differ from the reference pattern"
    with LocalService(env={"LOGPROBE_WORKER_THREADS": "2"}) as service, httpx.Client(timeout=600) as client:
        request = {
            "prompt": PROMPT,
            "preset": {"name": "prompt_contrast", "model": MODEL, "alpha": ALPHA},
            "max_tokens": args.tokens,
            "temperature": 0,
            "stop": None,
        }
        http_t = []
        for _ in range(args.reps):
            started = time.perf_counter()
            body = client.post(f"{service.base_url}/v1/decode/contrastive", json=request).json()
            http_t.append(time.perf_counter() - started)
        n_http = len(body["steps"])
    r, o, h = statistics.median(ref_t), statistics.median(ours_t), statistics.median(http_t)
    print(f"prompt contrast on {MODEL}, 2 views, greedy, {args.tokens} tokens, median of {args.reps}")
    print(f"reference pattern (HF models + Python combine): {args.tokens / r:6.1f} tok/s")
    print(
        f"logprobe worker loop, in process:               {args.tokens / o:6.1f} tok/s  ratio {r / o:.2f}x  "
        f"overhead beyond forwards {100 * statistics.median(overhead):.1f}%"
    )
    print(
        f"logprobe over HTTP (stops at EOS: {n_http} tokens, record stored): {n_http / h:6.1f} tok/s  "
        f"ratio {(n_http / h) / (args.tokens / r):.2f}x"
    )


if __name__ == "__main__":
    main()
