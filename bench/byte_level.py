"""Cost of exact byte-level scoring (Phan et al. 2024; workers/bytelevel) relative to token scoring, for texts of
100 and 1,000 bytes, side by side in one run on the same loaded model: token scoring is what a score job does
(one forward over the tokens, then the record's statistics); byte-level scoring is what a bytes job does (the
canonical cover plan, one tree-shaped forward over its states, the per-state cover sums).

Usage: python -m bench.byte_level [--models smollm2-135m-instruct gemma-3-270m] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from workers.backends.hf import HFBackend
from workers.bytelevel.job import byte_level
from workers.capture import capture_statistics
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.contract.names import CAPTURE_TOPK

PASSAGE = (
    "The river froze early that year, and the ferry stopped running before the first snow. People crossed on "
    "foot once the ice was thick enough, dragging sledges of firewood and flour from the market on the far bank. "
    "Children skated where the boats had been; the ferryman mended his nets by the stove and waited for spring. "
)


def text_of(n_bytes: int) -> str:
    return (PASSAGE * (n_bytes // len(PASSAGE) + 1))[:n_bytes]


def timed(work: Callable[[], object], reps: int) -> float:
    """The median wall time of `reps` runs."""
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def token_scoring(backend: HFBackend, ids: list[int]) -> object:
    """What a score job does: the forward over the tokens, then the record's per-position statistics."""
    with torch.inference_mode():
        hidden = backend.hidden_states(ids)[:-1]
        return capture_statistics(hidden, torch.tensor(ids), backend.head, CAPTURE_TOPK)


def bench_model(name: str, backend: HFBackend, sizes: list[int], reps: int) -> None:
    byte_level(backend, text_of(20), "canonical", 10**6)  # warm up: the byte vocabulary is built once
    for size in sizes:
        text = text_of(size)
        ids = backend.encode(text)
        states = byte_level(backend, text, "canonical", 10**6).states
        token_s = timed(partial(token_scoring, backend, ids), reps)
        byte_s = timed(partial(byte_level, backend, text, "canonical", 10**6), reps)
        print(f"{name:24} {size:6d} {len(ids):6d} {states:6d} {token_s:8.3f} {byte_s:8.3f} {byte_s / token_s:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 1000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = CommonSettings().data_dir
    print(f"{'model':24} {'bytes':>6} {'tokens':>6} {'states':>6} {'token s':>8} {'byte s':>8} {'ratio':>6}")
    for name in args.models:
        bench_model(name, HFBackend(PACKAGED_MODELS[name], data_dir), args.sizes, args.reps)


if __name__ == "__main__":
    main()
