"""The GPU checks of our own torch code (#33), for a lent GPU machine that reaches no registry: torch and numpy
from the machine, the rest from the tree (and pydantic/safetensors, which `workers.capture` reads its record
layout through, from a carried folder: bench/gpu_check.sh says how).

1. Statistics and rows on the device equal a float64 reference (the skipped unit test's check, without scipy).
2. Records are exact against the unembedding in bf16 and fp16: the statistics of W·h computed where the engine
   runs (the model's dtype for the matmul, float32 after it) against float64 arithmetic on the same rounded
   W and h, and rebuilt rows against float64 log-softmax.
3. Throughput: the statistics and the unembedding together (what a worker adds per scored token) against the
   bare matmul W·h in the model's dtype, rows per second of each and their ratio.

Prints one line per figure; exits 1 if a check fails. `--device cpu --vocab 4096 --rows 64` runs it anywhere
(tests/unit/test_gpu_check.py does, so it does not rot while no GPU is lent).

Usage: python -m bench.gpu_check [--device cuda] [--vocab 49152] [--hidden 576] [--rows 2048]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from workers.capture import Unembedding, capture_statistics_many, rebuild_rows

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# float32 statistics of float32 logits against float64 on the same logits: the rounding of a 50k-term sum
ATOL = {"logprob": 1e-4, "entropy": 1e-4, "topk_logprobs": 1e-4, "rows": 1e-4}


def reference(logits: torch.Tensor, targets: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    """float64 statistics of float64 logits [n, V] for the next tokens [n]."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    chosen = logp.gather(1, targets[:, None])[:, 0]
    return {
        "logprob": chosen.numpy(),
        "rank": (1 + (logits.double() > logits.double().gather(1, targets[:, None])).sum(dim=1)).numpy(),
        "entropy": (-(logp.exp() * logp).sum(dim=1)).numpy(),
        "topk_logprobs": logp.topk(k, dim=-1).values.numpy(),
    }


def worst(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        name: float(np.abs(got[name].astype(np.float64) - ref[name]).max())
        for name in ("logprob", "entropy", "topk_logprobs")
    }


def check_exactness(device: str, dtype: torch.dtype, vocab: int, hidden_size: int, rows: int) -> bool:
    """Statistics and rebuilt rows on `device` in `dtype` against float64 on the same rounded W and h."""
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5).to(dtype)
    states = (torch.randn(rows, hidden_size, generator=gen) * 3).to(dtype)
    ids = torch.randint(0, vocab, (rows + 1,), generator=gen)
    head = Unembedding(weight).to(device)
    stats = capture_statistics_many([states], [ids], head, 5, chunk_rows=256)[0]
    exact_logits = states.double() @ weight.double().T  # the same rounded inputs, float64 arithmetic
    # The engine's logits are W·h in the model's dtype, rounded once to it: the record's statistics are those of
    # that rounded matrix (float32 from there on). The float64 reference of the same rounded logits:
    engine_logits = head.logits(states)
    ref = reference(engine_logits, ids[1:], 5)
    errors = worst(stats, ref)
    rank_equal = bool(np.array_equal(stats["rank"], ref["rank"]))
    rows_err = float(
        np.abs(rebuild_rows(states[:64], head) - torch.log_softmax(engine_logits[:64].double(), -1).numpy()).max()
    )
    rounding = float((engine_logits.double() - exact_logits).abs().max())
    ok = rank_equal and rows_err <= ATOL["rows"] and all(errors[k] <= ATOL[k] for k in errors)
    name = str(dtype).removeprefix("torch.")
    print(
        f"exactness {name} on {device}: {'ok' if ok else 'FAIL'}  max|Δ| logprob {errors['logprob']:.2e}, entropy "
        f"{errors['entropy']:.2e}, top-5 {errors['topk_logprobs']:.2e}, rows {rows_err:.2e}, ranks equal {rank_equal}; "
        f"the dtype's own rounding of W·h {rounding:.2e}"
    )
    return ok


def check_statistics(device: str) -> bool:
    """The skipped unit test's check: chunks through shared matmuls on the device equal the CPU and float64."""
    rng = np.random.default_rng(4)
    cpu = Unembedding(torch.from_numpy(rng.standard_normal((3000, 32)).astype(np.float32)))
    dev = cpu.to(device)
    lengths = [40, 3, 25]
    hidden = [torch.from_numpy(rng.standard_normal((n, 32)).astype(np.float32)) for n in lengths]
    ids = [torch.from_numpy(rng.integers(0, 3000, n + 1)) for n in lengths]
    on_dev = capture_statistics_many(hidden, ids, dev, 5, chunk_rows=24)
    on_cpu = capture_statistics_many(hidden, ids, cpu, 5, chunk_rows=24)
    err = 0.0
    for states, tokens, stats, same in zip(hidden, ids, on_dev, on_cpu, strict=True):
        ref = reference(states.double() @ cpu.weight.double().T, tokens[1:], 5)
        err = max(err, *worst(stats, ref).values(), float(np.abs(stats["topk_logprobs"] - same["topk_logprobs"]).max()))
    rows_err = float(np.abs(rebuild_rows(hidden[0], dev) - rebuild_rows(hidden[0], cpu)).max())
    ok = err <= 1e-4 and rows_err <= 1e-4 and dev.logits(hidden[0]).device.type == "cpu"
    print(
        f"statistics on {device} vs float64 and the CPU: {'ok' if ok else 'FAIL'}  "
        f"max|Δ| {err:.2e}, rows {rows_err:.2e}"
    )
    return ok


def timed(run: Callable[[], object], device: str, rounds: int) -> float:
    """The best of `rounds` runs, in seconds (the device synchronised around each)."""
    best = float("inf")
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def throughput(device: str, dtype: torch.dtype, vocab: int, hidden_size: int, rows: int, rounds: int) -> None:
    gen = torch.Generator().manual_seed(1)
    weight = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5).to(dtype).to(device)
    states = (torch.randn(rows, hidden_size, generator=gen) * 3).to(dtype).to(device)
    ids = torch.randint(0, vocab, (rows + 1,), generator=gen)
    head = Unembedding(weight)
    with torch.inference_mode():
        bare = timed(lambda: states @ weight.T, device, rounds)
        ours = timed(lambda: capture_statistics_many([states], [ids], head, 20), device, rounds)
    name = str(dtype).removeprefix("torch.")
    print(
        f"throughput {name} on {device}, V={vocab} d={hidden_size}, {rows} rows: "
        f"bare matmul {rows / bare:,.0f} rows/s, unembedding + statistics {rows / ours:,.0f} rows/s, "
        f"ratio {bare / ours:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing checked")
        sys.exit(1)
    if args.device == "cuda":
        print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    ok = check_statistics(args.device)
    for dtype in ("bfloat16", "float16"):
        ok &= check_exactness(args.device, DTYPES[dtype], args.vocab, args.hidden, min(args.rows, 512))
    for dtype in ("bfloat16", "float16", "float32"):
        throughput(args.device, DTYPES[dtype], args.vocab, args.hidden, args.rows, args.rounds)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
