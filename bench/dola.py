"""DoLa decoding speed vs plain greedy: the worker's decoding loop in process (`workers.decoding.decode`, the code
a contrastive job runs), on a packaged model, greedy, end-of-sequence off so that every run makes the same number of
tokens; plain greedy, then the `dola` preset's streams over the "low" and "high" candidate layers.

Usage: python -m bench.dola [--model smollm2-135m-instruct] [--tokens 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from workers.backends.hf import HFBackend
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.contract.jobs import Sampling
from workers.decoding import View, decode
from workers.dola import LayerChoice, dola_streams

PROMPT = "The history of the printing press begins"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct", choices=sorted(PACKAGED_MODELS))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    backend = HFBackend(PACKAGED_MODELS[args.model], CommonSettings().data_dir)
    prefix = backend.encode(PROMPT)
    sampling = Sampling(max_tokens=args.tokens, temperature=0.0, top_p=1.0)
    runs: list[tuple[str, object, LayerChoice | None]] = [("plain greedy", backend, None)]
    for choice in ("low", "high"):
        streams = dola_streams(backend, choice)
        runs.append((f"DoLa {choice} (layers {streams.layers})", streams, choice))
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(args.reps):
        for name, engine, _ in runs:
            started = time.perf_counter()
            decoded = decode([View(engine, prefix)], sampling, topk=5, eos_ids=set())  # type: ignore[arg-type]
            times[name].append(time.perf_counter() - started)
            assert len(decoded.completion) == args.tokens
    plain = statistics.median(times["plain greedy"])
    print(f"{args.model}, {len(prefix)}-token prompt, greedy, {args.tokens} tokens, median of {args.reps}")
    for name, _, _ in runs:
        took = statistics.median(times[name])
        print(f"{name:48s} {args.tokens / took:6.1f} tok/s  {took / plain:5.2f}x plain's time per token")


if __name__ == "__main__":
    main()
