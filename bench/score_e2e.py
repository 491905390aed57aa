"""End-to-end /v1/score (HTTP → Redis → worker → record → JSON) vs a bare transformers forward pass.

Both run on this machine, interleaved, on texts of the same length; the worker and this process each use
2 threads and never run at the same time. Usage: python bench/score_e2e.py [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.launcher.local_service import LocalService
from bench.texts import text_of_tokens
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.models import safetensors_dir

MODEL = "smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder, _ = safetensors_dir(PACKAGED_MODELS[MODEL], CommonSettings().data_dir)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text).input_ids)

    header = f"{'tokens':>6s} {'bare forward':>13s} {'/v1/score':>10s} {'ratio':>6s} {'cached':>8s}"
    print(f"{header}   (median of {args.reps})")
    with LocalService(env={"LOGPROBE_WORKER_THREADS": "2"}) as service, httpx.Client(timeout=600) as client:
        for n_tokens in (100, 1000):
            bare, e2e, cached = [], [], []
            for rep in range(args.reps + 1):  # the first round warms both paths up
                text = text_of_tokens(n_tokens, encode, salt=f"Run {rep}.")
                ids = torch.tensor([encode(text)])
                started = time.perf_counter()
                with torch.inference_mode():
                    model(input_ids=ids)
                t_bare = time.perf_counter() - started
                started = time.perf_counter()
                body = client.post(f"{service.base_url}/v1/score", json={"model": MODEL, "text": text}).json()
                t_e2e = time.perf_counter() - started
                assert body["cached"] is False and body["n_tokens"] == ids.shape[1]
                started = time.perf_counter()
                client.post(f"{service.base_url}/v1/score", json={"model": MODEL, "text": text}).raise_for_status()
                t_cached = time.perf_counter() - started
                if rep:
                    bare.append(t_bare)
                    e2e.append(t_e2e)
                    cached.append(t_cached)
            b, e, c = statistics.median(bare), statistics.median(e2e), statistics.median(cached)
            print(f"{n_tokens:6d} {b * 1000:10.0f} ms {e * 1000:7.0f} ms {b / e:5.2f}x {c * 1000:5.0f} ms")


if __name__ == "__main__":
    main()
