"""Bytes per position of a record kept in full (`retain: "full"`) and as statistics only (`"stats"`), for the
packaged models, measured in a real Redis; and the extrapolation to Llama-3-8B and a million 500-token documents.

Each text is scored twice through the worker's own capture-and-store path, once per retain mode, and the Redis hash
is measured two ways: the summed lengths of its fields (HSTRLEN: what a replica or a dump carries) and MEMORY USAGE
(what the server holds, with its allocator's overhead). A least-squares line over texts of several lengths splits
each into bytes per position and a fixed cost per record.

Usage: python -m bench.record_bytes [--tokens 128 256 512 1024]
"""

from __future__ import annotations

import argparse

import numpy as np
import redis
import torch

from bench.storage import bench_redis
from bench.texts import text_of_tokens
from workers.backends.hf import HFBackend
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.contract.jobs import ScoreJob
from workers.contract.keys import record_key
from workers.contract.names import CAPTURE_TOPK, Retain
from workers.contract.records import STAT_ARRAYS
from workers.handlers.base import Context
from workers.handlers.registry import run_job

MODES: tuple[Retain, ...] = ("full", "stats")
# The extrapolation's target: Llama-3-8B in bf16, a million documents of 500 tokens.
TARGET = {"name": "Llama-3-8B", "d": 4096, "dtype_bytes": 2, "vocab": 128_256}
DOCUMENTS, DOC_TOKENS = 1_000_000, 500


def measure(client: redis.Redis, key: str) -> tuple[dict[str, int], int]:
    """Per field, its length in bytes; and the key's MEMORY USAGE (every field sampled)."""
    fields = {f.decode(): int(client.hstrlen(key, f)) for f in client.hkeys(key)}
    return fields, int(client.memory_usage(key, samples=0) or 0)


def fit(positions: list[int], sizes: list[int]) -> tuple[float, float]:
    """bytes = fixed + per_position * positions, by least squares."""
    per_position, fixed = np.polyfit(np.asarray(positions, float), np.asarray(sizes, float), 1)
    return float(per_position), float(fixed)


def stats_bytes_per_position(topk: int) -> int:
    """The statistics blob's arrays per position: the scalars and the top-k ids and logprobs (4 bytes each)."""
    return sum(4 * (topk if trailing == "k" else 1) for _, trailing in STAT_ARRAYS.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 256, 512, 1024])
    args = parser.parse_args()
    torch.set_num_threads(2)
    data_dir = CommonSettings().data_dir
    rows: dict[tuple[str, Retain], dict[str, float]] = {}
    with bench_redis() as client:
        for m, name in enumerate(("smollm2-135m-instruct", "gemma-3-270m")):
            backend = HFBackend(PACKAGED_MODELS[name], data_dir)
            card = backend.card
            ctx = Context.build(client, {name: backend}, b"bench", 3600)
            print(f"\n{name}: d={card.hidden_size} V={card.vocab_size} hidden dtype={card.hidden_dtype}")
            print(
                f"{'retain':7s} {'positions':>9s} {'meta':>7s} {'stats':>8s} {'hidden':>9s} "
                f"{'summed':>9s} {'MEMORY':>9s}"
            )
            for retain in MODES:
                positions, summed, memory, meta_bytes, stats_bytes = [], [], [], [], []
                for i, n in enumerate(args.tokens):
                    ids = backend.encode(text_of_tokens(n, backend.encode, salt=f"{retain}{i}"))
                    rid = f"{m:02x}{i:02x}{MODES.index(retain)}".ljust(32, "0")  # one record per model, text, mode
                    job = ScoreJob(
                        job_id=rid,
                        tenant="bench",
                        model=name,
                        fingerprint=card.fingerprint,
                        record_id=rid,
                        token_ids=ids,
                        retain=retain,
                    )
                    outcome = run_job(job, ctx)
                    assert outcome.ok, outcome.error
                    fields, used = measure(client, record_key("bench", job.record_id))
                    assert ("hidden" in fields) == (retain == "full")
                    positions.append(len(ids) - 1)
                    summed.append(sum(fields.values()))
                    memory.append(used)
                    meta_bytes.append(fields["meta"])
                    stats_bytes.append(fields["stats"])
                    print(
                        f"{retain:7s} {len(ids) - 1:9d} {fields['meta']:7d} {fields['stats']:8d} "
                        f"{fields.get('hidden', 0):9d} {summed[-1]:9d} {used:9d}"
                    )
                per_position, fixed = fit(positions, summed)
                memory_per_position, memory_fixed = fit(positions, memory)
                rows[(name, retain)] = {
                    "d": card.hidden_size,
                    "dtype_bytes": torch.finfo(getattr(torch, card.hidden_dtype)).bits // 8,
                    "per_position": per_position,
                    "fixed": fixed,
                    "memory_per_position": memory_per_position,
                    "memory_fixed": memory_fixed,
                    "meta_per_position": fit(positions, meta_bytes)[0],
                    "stats_per_position": fit(positions, stats_bytes)[0],
                }
            del backend, ctx
    report(rows)


def report(rows: dict[tuple[str, Retain], dict[str, float]]) -> None:
    print(
        f"\n{'model':22s} {'retain':6s} {'B/pos (fields)':>14s} {'B/record fixed':>14s} "
        f"{'B/pos (MEMORY)':>14s} {'full/stats':>10s}"
    )
    for (name, retain), r in rows.items():
        ratio = r["per_position"] / rows[(name, "stats")]["per_position"]
        print(
            f"{name:22s} {retain:6s} {r['per_position']:14.1f} {r['fixed']:14.0f} "
            f"{r['memory_per_position']:14.1f} {ratio:9.1f}x"
        )
    # s: what a position costs a stats record (statistics blob + its token id in the metadata JSON), measured on
    # both models, the larger taken (Gemma's 6-digit ids are closer to Llama-3's 128,256-token vocabulary).
    s = max(r["per_position"] for (_, retain), r in rows.items() if retain == "stats")
    fixed = max(r["fixed"] for r in rows.values())
    # what Redis holds (MEMORY USAGE) over the summed fields, per position, the larger of the two models
    held = {
        mode: max(r["memory_per_position"] / r["per_position"] for (_, retain), r in rows.items() if retain == mode)
        for mode in MODES
    }
    d, b = TARGET["d"], TARGET["dtype_bytes"]
    full = d * b + s
    positions = DOC_TOKENS - 1
    print(
        f"\nstats bytes per position s = statistics arrays {stats_bytes_per_position(CAPTURE_TOPK)} B "
        f"(6 scalars x 4 B + top-{CAPTURE_TOPK} ids and logprobs x 4 B) + the token id in the metadata JSON: "
        f"measured s = {s:.0f} B"
    )
    print(f"full bytes per position = d x dtype bytes + s; stats = s (independent of d and of V={TARGET['vocab']:,})")
    print(
        f"{TARGET['name']} (d={d}, bf16: {b} B): full = {d} x {b} + {s:.0f} = {full:,.0f} B/position; "
        f"stats = {s:.0f} B/position ({full / s:.0f}x smaller)"
    )
    total_positions = DOCUMENTS * positions
    for retain, per in (("full", full), ("stats", s)):
        total = DOCUMENTS * (fixed + positions * per)
        print(
            f"  {DOCUMENTS:,} documents x {DOC_TOKENS} tokens ({total_positions:.2e} positions), {retain}: "
            f"N x ({fixed:.0f} + {positions} x {per:,.0f}) = {total / 1e12:.3f} TB of fields; "
            f"x {held[retain]:.2f} (MEMORY USAGE / fields) = {total * held[retain] / 1e12:.3f} TB held by Redis"
        )


if __name__ == "__main__":
    main()
