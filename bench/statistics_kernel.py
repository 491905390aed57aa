"""Would a compiled kernel pay for the per-position statistics on a CPU worker? The eager `row_statistics` as the
worker runs it (blocks of 8 rows spread over the torch threads) against the same function through torch.compile
(inductor's C++ backend: the element-wise work and reductions fused into a few loops per row), side by side in
one run, each the best of several rounds, on at most one unembedding chunk of rows (what a worker takes at once);
also the compile's cost, which a worker would pay at every start. Checks that both give the same numbers.

Usage: python -m bench.statistics_kernel [--rows 100 400 1200] [--vocab 49152 128256] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from workers.capture import STAT_ROWS, _blocks_statistics, chunk_rows_for, row_statistics

Stats = dict[str, torch.Tensor]


def best_of(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 400, 1200])
    parser.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernel: Any = torch.compile(row_statistics.__wrapped__, dynamic=False)  # type: ignore[attr-defined]
    print(f"{'vocab':>7s} {'rows':>6s} {'eager ms':>9s} {'compiled ms':>12s} {'ratio':>6s} {'compile s':>10s}")
    with torch.inference_mode():
        for vocab in args.vocab:
            for n in sorted({min(rows, chunk_rows_for(vocab)) for rows in args.rows}):
                generator = torch.Generator().manual_seed(n)
                logits = torch.randn(n, vocab, generator=generator) * 4
                targets = torch.randint(0, vocab, (n,), generator=generator)
                blocks = [(logits[lo : lo + STAT_ROWS], targets[lo : lo + STAT_ROWS]) for lo in range(0, n, STAT_ROWS)]
                blocks = [b for b in blocks if b[0].shape[0] == STAT_ROWS]  # one shape: one kernel

                def eager(parts: list[tuple[torch.Tensor, torch.Tensor]] = blocks) -> list[Stats]:
                    return _blocks_statistics(parts, 20)

                def compiled(parts: list[tuple[torch.Tensor, torch.Tensor]] = blocks) -> list[Stats]:
                    return [kernel(rows, ids, 20) for rows, ids in parts]

                started = time.perf_counter()
                fused = compiled()
                compile_s = time.perf_counter() - started
                for a, b in zip(eager(), fused, strict=True):
                    torch.testing.assert_close(a["entropy"], b["entropy"], rtol=1e-5, atol=1e-4)
                    assert torch.equal(a["rank"], b["rank"])
                eager_s, compiled_s = best_of(eager, args.rounds), best_of(compiled, args.rounds)
                print(
                    f"{vocab:>7d} {n:>6d} {eager_s * 1e3:>9.1f} {compiled_s * 1e3:>12.1f} "
                    f"{eager_s / compiled_s:>5.2f}x {compile_s:>10.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
