"""Cost of contrastive decoding by bytes (workers/bytelevel/decoding.py) relative to decoding by tokens
(workers/decoding.py), in milliseconds per generated character, side by side in one run on the same loaded models:
a same-tokenizer pair (SmolLM2's chat prompt against its bare prompt, prompt contrast with a = 0.5) at level token
and at level byte, and, for reference, a cross-tokenizer pair (Emulated Disalignment, Gemma-3-270M base against
SmolLM2-Instruct, a = 0.3) at level byte. Greedy; each run starts from its prompt (prefill included).

Usage: python -m bench.byte_decoding [--tokens 16] [--bytes 48] [--reps 3] [--threads 1] [--no-cross]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from workers.backends.hf import HFBackend
from workers.bytelevel.contrast_job import byte_view
from workers.bytelevel.decoding import decode_bytes
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.contract.jobs import Sampling
from workers.decoding import View, decode

SMOL, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"
PROMPT = "Write one sentence about a river in winter."
MAX_STATES = 32_768


def timed(run: Callable[[], str], reps: int) -> tuple[float, str]:
    """The median wall time of `reps` runs and the text the (deterministic) run generates."""
    times, text = [], ""
    for _ in range(reps):
        started = time.perf_counter()
        text = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), text


def chat_ids(backend: HFBackend, prompt: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}]
    out = backend.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def by_tokens(backend: HFBackend, prefixes: list[list[int]], weights: list[float], n: int) -> str:
    views = [View(backend, p, w) for p, w in zip(prefixes, weights, strict=True)]
    decoded = decode(views, Sampling(max_tokens=n, temperature=0.0, top_p=1.0))
    return backend.decode(decoded.completion)


def by_bytes(backends: list[HFBackend], prefixes: list[list[int]], weights: list[float], n: int) -> str:
    views = [byte_view(b, p, w, 1.0, MAX_STATES) for b, p, w in zip(backends, prefixes, weights, strict=True)]
    return decode_bytes(views, Sampling(max_tokens=n, temperature=0.0, top_p=1.0)).text


def report(label: str, seconds: float, text: str, base: float | None) -> float:
    per_char = 1000 * seconds / max(len(text), 1)
    ratio = "" if base is None else f"{per_char / base:6.1f}"
    print(f"{label:50} {len(text):6d} {seconds:8.2f} {per_char:9.1f} {ratio:>6}  {text!r}", flush=True)
    return per_char


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16, help="max_tokens of the token-level runs")
    parser.add_argument("--bytes", type=int, default=48, help="max_tokens (bytes) of the byte-level runs")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--no-cross", action="store_true", help="skip the SmolLM2 / Gemma-3 pair (loads Gemma)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = CommonSettings().data_dir
    smol = HFBackend(PACKAGED_MODELS[SMOL], data_dir)
    prefixes, weights = [chat_ids(smol, PROMPT), smol.encode(PROMPT)], [1.5, -0.5]
    by_bytes([smol, smol], prefixes, weights, 2)  # warm up: the byte vocabulary is built once per model
    print(f"{'run':50} {'chars':>6} {'s':>8} {'ms/char':>9} {'ratio':>6}  text")
    token_s, token_text = timed(lambda: by_tokens(smol, prefixes, weights, args.tokens), args.reps)
    base = report("prompt contrast, SmolLM2, level token", token_s, token_text, None)
    byte_s, byte_text = timed(lambda: by_bytes([smol, smol], prefixes, weights, args.bytes), args.reps)
    report("prompt contrast, SmolLM2, level byte", byte_s, byte_text, base)
    if not args.no_cross:
        gemma = HFBackend(PACKAGED_MODELS[GEMMA], data_dir)
        pair = [gemma.encode(PROMPT), chat_ids(smol, PROMPT)]
        by_bytes([gemma, smol], pair, [1.3, -0.3], 2)
        cross_s, cross_text = timed(lambda: by_bytes([gemma, smol], pair, [1.3, -0.3], args.bytes), args.reps)
        report("ED, Gemma-3 base vs SmolLM2-Instruct, level byte", cross_s, cross_text, base)


if __name__ == "__main__":
    main()
