"""Per-position statistics of full next-token distributions, and the rebuild of full rows from hidden states.

Logits are `W·h` (PILS, "Better Language Model Inversion by Compactly Representing Next-Token
Distributions"): the final hidden state h plus the unembedding reproduce the whole row, so a record keeps h
and the handful of statistics every single-model analysis needs. Rows are processed in chunks so the
[positions, vocab] matrix is never materialised at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers.contract.records import STAT_ARRAYS

# Rows per unembedding matmul: each matmul streams all of W from memory, so few large ones beat many small
# ones (1,000 SmolLM2 rows: 370 ms in chunks of 256+, 550 ms in chunks of 64). Bounded by logits memory.
LOGITS_BUDGET = 64 * 1024 * 1024  # float32 logits per matmul (256 MiB)
STAT_ROWS = 8  # rows per statistics pass: 8 x 49,152 float32 rows stay in L2
# Values per statistics pass on an accelerator (a GPU worker's): large blocks, each temporary at most 64 MiB
ACCELERATOR_BLOCK = 16 * 1024 * 1024


@dataclass(frozen=True)
class Unembedding:
    """The map from final hidden state to logits, exactly as the model applies it."""

    weight: torch.Tensor  # [V, d], in the model's dtype
    bias: torch.Tensor | None = None
    softcap: float | None = None  # Gemma-2 style final logit soft-capping
    scale: float = 1.0  # a constant factor on the logits (Cohere's logit_scale, Granite's 1 / logits_scaling)

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def to(self, device: str | torch.device) -> Unembedding:
        """The same unembedding with its weights on `device` (a GPU worker's: see `device_logits`)."""
        bias = None if self.bias is None else self.bias.to(device)
        return dataclasses.replace(self, weight=self.weight.to(device), bias=bias)

    def device_logits(self, hidden: torch.Tensor, keep_float64: bool = False) -> torch.Tensor:
        """float32 logits for hidden states [n, d] (a float64 model's stay float64 with `keep_float64`), on the
        weights' device; the matmul and the scale run in the model's own dtype, as the models apply them. On a GPU
        worker this is the engine's own kind of arithmetic, and the rows never cross to the CPU."""
        hidden = hidden.to(self.weight.device, self.weight.dtype)
        out = torch.nn.functional.linear(hidden, self.weight, self.bias)
        if self.scale != 1.0:
            out = out * self.scale
        out = out if keep_float64 and out.dtype == torch.float64 else out.float()
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def logits(self, hidden: torch.Tensor, keep_float64: bool = False) -> torch.Tensor:
        """`device_logits` on the CPU (where the caller goes on with them)."""
        return self.device_logits(hidden, keep_float64).cpu()

    def logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full log-probability rows on the CPU, normalised where the logits were computed."""
        return torch.log_softmax(self.device_logits(hidden), dim=-1).cpu()


def logit_scale(config: Any) -> float:
    """The constant factor a model's forward puts on W·h, from its config: Cohere's `logit_scale`, Granite's
    division by `logits_scaling` (vLLM's LogitsProcessor applies the same); 1 for other models."""
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    divisor = getattr(config, "logits_scaling", None)
    return scale / float(divisor) if divisor else scale


@torch.inference_mode()
def row_statistics(logits: torch.Tensor, next_ids: torch.Tensor, topk: int) -> dict[str, torch.Tensor]:
    """Statistics of rows of logits [n, V] for the observed next tokens [n], in the logits' dtype.

    Written as few full passes over the rows as possible (log_softmax, compare, topk, exp and four dot
    products); callers pass a few rows at a time so the working set stays in cache.
    """
    vocab = logits.shape[-1]
    # Rank on the raw logits: subtracting logsumexp in float32 could merge near-ties.
    rank = (logits > logits.gather(1, next_ids[:, None])).sum(dim=1, dtype=torch.int32) + 1
    logp = torch.log_softmax(logits, dim=-1)
    logz = logits[:, 0] - logp[:, 0]
    chosen = logp.gather(1, next_ids[:, None])
    top = logp.topk(topk, dim=-1)
    p = logp.exp()
    entropy = -torch.linalg.vecdot(p, logp)
    logp_m2 = torch.linalg.vecdot(p * logp, logp)
    dev = p.sub_(1.0 / vocab)  # p - mean(p): the V probability values, centred
    mu2 = torch.linalg.vecdot(dev, dev).double() / vocab
    dev.square_()
    mu4 = torch.linalg.vecdot(dev, dev).double() / vocab
    kurtosis = (mu4 / mu2.square() - 3.0).to(logits.dtype)
    return {
        "logprob": chosen[:, 0],
        "rank": rank,
        "entropy": entropy,
        "logp_m2": logp_m2,
        "kurtosis": kurtosis,
        "logz": logz,
        "topk_ids": top.indices.to(torch.int32),
        "topk_logprobs": top.values,
    }


def chunk_rows_for(vocab_size: int) -> int:
    """Rows per unembedding matmul: within the logits budget, a multiple of the statistics pass."""
    return max(STAT_ROWS, LOGITS_BUDGET // vocab_size // STAT_ROWS * STAT_ROWS)


@torch.inference_mode()
def capture_statistics(
    hidden: torch.Tensor, token_ids: torch.Tensor, head: Unembedding, topk: int, chunk_rows: int | None = None
) -> dict[str, np.ndarray]:
    """Statistics for positions 1..T-1 of a sequence: hidden [T-1, d] predicted tokens token_ids[1:]."""
    return capture_statistics_many([hidden], [token_ids], head, topk, chunk_rows)[0]


@torch.inference_mode()
def capture_statistics_many(
    hidden: list[torch.Tensor],
    token_ids: list[torch.Tensor],
    head: Unembedding,
    topk: int,
    chunk_rows: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """`capture_statistics` of several sequences, their rows through shared unembedding matmuls: each matmul
    streams all of W from memory, so four 100-row sequences cost ~2.4x less in one matmul than in four."""
    for states, ids in zip(hidden, token_ids, strict=True):
        if states.shape[0] != ids.shape[0] - 1:
            raise ValueError(f"{states.shape[0]} hidden states for {ids.shape[0] - 1} predicted tokens")
    rows = hidden[0] if len(hidden) == 1 else torch.cat(hidden)
    targets = torch.cat([ids[1:] for ids in token_ids]).long()
    step = chunk_rows or chunk_rows_for(head.vocab_size)
    chunks = (head.device_logits(rows[lo : lo + step]) for lo in range(0, rows.shape[0], step))
    stats = _statistics(chunks, targets.to(head.device), topk)
    bounds = np.cumsum([0, *(states.shape[0] for states in hidden)])
    return [{name: value[lo:hi] for name, value in stats.items()} for lo, hi in itertools.pairwise(bounds)]


@torch.inference_mode()
def logits_statistics(logits: torch.Tensor, token_ids: torch.Tensor, topk: int) -> dict[str, np.ndarray]:
    """The same statistics from rows the model produced itself, [T-1, V] (for models kept as full rows)."""
    if logits.shape[0] != token_ids.shape[0] - 1:
        raise ValueError(f"{logits.shape[0]} rows for {token_ids.shape[0] - 1} predicted tokens")
    return _statistics(iter([logits.float()]), token_ids[1:].long(), topk)


def _statistics(chunks: Iterator[torch.Tensor], targets: torch.Tensor, topk: int) -> dict[str, np.ndarray]:
    """The statistics of the rows of the chunks, in order, for their observed next tokens `targets`."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in STAT_ARRAYS}
    done = 0
    for logits in chunks:
        n = logits.shape[0]
        on_cpu = logits.device.type == "cpu"
        rows = STAT_ROWS if on_cpu else max(1, ACCELERATOR_BLOCK // logits.shape[1])
        blocks = [
            (logits[sub : sub + rows], targets[done + sub : done + min(sub + rows, n)]) for sub in range(0, n, rows)
        ]
        found = _blocks_statistics(blocks, topk) if on_cpu else [row_statistics(r, t, topk) for r, t in blocks]
        for stats in found:
            for name, value in stats.items():
                parts[name].append(value.cpu())
        done += n
    empty = {name: (0,) if trailing is None else (0, topk) for name, (_, trailing) in STAT_ARRAYS.items()}
    return {
        name: (torch.cat(parts[name]).numpy() if parts[name] else np.zeros(empty[name])).astype(STAT_ARRAYS[name][0])
        for name in STAT_ARRAYS
    }


_pools: dict[int, ThreadPoolExecutor] = {}  # by size: the statistics pool of the worker's thread setting
_pools_lock = threading.Lock()


def _blocks_statistics(blocks: list[tuple[torch.Tensor, torch.Tensor]], topk: int) -> list[dict[str, torch.Tensor]]:
    """`row_statistics` of each block, in order, the blocks spread over the process's torch threads, each block on
    one thread. A block's ~15 operations are too small to split between threads: run that way, every operation pays
    a barrier, and on a busy machine a descheduled thread stalls the other (2 threads: 2x slower than 1)."""
    threads = torch.get_num_threads()
    if threads == 1 or len(blocks) == 1:
        return [row_statistics(rows, targets, topk) for rows, targets in blocks]
    with _pools_lock:
        pool = _pools.get(threads) or _pools.setdefault(threads, ThreadPoolExecutor(threads, "statistics"))
    torch.set_num_threads(1)  # for the blocks' threads (each takes the setting when it first runs torch)
    try:
        return list(pool.map(lambda block: _one_thread_statistics(block[0], block[1], topk), blocks))
    finally:
        torch.set_num_threads(threads)


def _one_thread_statistics(rows: torch.Tensor, targets: torch.Tensor, topk: int) -> dict[str, torch.Tensor]:
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return row_statistics(rows, targets, topk)


@torch.inference_mode()
def rebuild_rows(hidden: torch.Tensor, head: Unembedding) -> np.ndarray:
    """Full float32 log-probability rows [n, V] from stored hidden states [n, d]."""
    chunk_rows = chunk_rows_for(head.vocab_size)
    out = np.empty((hidden.shape[0], head.vocab_size), dtype=np.float32)
    for lo in range(0, hidden.shape[0], chunk_rows):
        out[lo : lo + chunk_rows] = head.logprobs(hidden[lo : lo + chunk_rows]).numpy()
    return out


@torch.inference_mode()
def cross_statistics(logp: torch.Tensor, logq: torch.Tensor) -> dict[str, np.ndarray]:
    """Statistics of two aligned sets of log-probability rows [n, V] (see protocol.CROSS_ARRAYS), in float64."""
    lp, lq = logp.double(), logq.double()
    p, q = lp.exp(), lq.exp()
    log_m = torch.log(0.5 * (p + q))
    kl_pq = torch.linalg.vecdot(p, lp - lq)
    kl_qp = torch.linalg.vecdot(q, lq - lp)
    js = 0.5 * (torch.linalg.vecdot(p, lp - log_m) + torch.linalg.vecdot(q, lq - log_m))
    p_top, q_top = lp.argmax(dim=-1, keepdim=True), lq.argmax(dim=-1, keepdim=True)
    out = {
        "kl_pq": kl_pq,
        "kl_qp": kl_qp,
        "js": js,
        "q_logp_mean": torch.linalg.vecdot(q, lp),
        "q_logp_m2": torch.linalg.vecdot(q, lp * lp),
        "p_logq_mean": torch.linalg.vecdot(p, lq),
        "p_logq_m2": torch.linalg.vecdot(p, lq * lq),
        "rank_ptop_in_q": ((lq > lq.gather(1, p_top)).sum(dim=1) + 1).double(),
        "rank_qtop_in_p": ((lp > lp.gather(1, q_top)).sum(dim=1) + 1).double(),
    }
    return {name: value.numpy() for name, value in out.items()}
