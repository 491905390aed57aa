"""Jobs that rebuild full rows from a kept record: `rows` (a raw export of positions [start, stop)) and `cross`
(statistics between two records' distributions, e.g. KL and cross-entropy, chunk by chunk)."""

from __future__ import annotations

import time

import numpy as np
import torch

from workers.capture import chunk_rows_for, cross_statistics
from workers.contract.jobs import AnyJob, CrossJob, JobOutcome, RowsJob
from workers.contract.keys import cross_key, export_key
from workers.contract.lifetimes import put_until
from workers.contract.names import MAX_BLOB_BYTES
from workers.contract.records import CROSS_ARRAYS, encode_arrays
from workers.handlers.base import Context, Handler
from workers.lanes import checkpoint
from workers.outcomes import JobFailed

EXPORT_TTL_S = 120


def export_rows(job: AnyJob, ctx: Context) -> JobOutcome:
    assert isinstance(job, RowsJob)
    record = ctx.records.stored(job.tenant, job.record_id, ctx.engines.backend_for(job.model, job.fingerprint))
    n = len(record.meta.token_ids) - 1
    if not 1 <= job.start < job.stop <= n + 1:
        raise JobFailed("invalid_positions", f"positions must satisfy 1 <= start < stop <= {n + 1}")
    if (job.stop - job.start) * 4 * record.meta.vocab_size > MAX_BLOB_BYTES:
        raise JobFailed("export_too_large", "too many positions for one export; page with start/stop")
    out = record.logprobs(np.arange(job.start - 1, job.stop - 1))
    put_until(ctx.redis, export_key(job.job_id), encode_arrays({"logprobs": out}), time.time() + EXPORT_TTL_S)
    return JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)


def cross(job: AnyJob, ctx: Context) -> JobOutcome:
    assert isinstance(job, CrossJob)
    sides = []
    for side in (job.p, job.q):
        record = ctx.records.stored(job.tenant, side.record_id, ctx.engines.backend_for(side.model, side.fingerprint))
        rows = np.asarray(side.positions) - 1
        if rows.min() < 0 or rows.max() >= len(record.meta.token_ids) - 1:
            raise JobFailed("invalid_positions", f"positions of {side.record_id} out of range")
        sides.append((record, rows))
    (p, p_rows), (q, q_rows) = sides
    if len(p_rows) != len(q_rows):
        raise JobFailed("invalid_positions", "both sides need the same number of positions")
    if p.meta.vocab_size != q.meta.vocab_size:
        raise JobFailed("tokenizer_mismatch", "the two models do not share a vocabulary")
    step = max(1, chunk_rows_for(p.meta.vocab_size) // 2)
    parts = []
    for lo in range(0, len(p_rows), step):
        checkpoint()  # a slice: one chunk of rows
        p_chunk = torch.from_numpy(p.logprobs(p_rows[lo : lo + step]))
        parts.append(cross_statistics(p_chunk, torch.from_numpy(q.logprobs(q_rows[lo : lo + step]))))
    arrays = {name: np.concatenate([part[name] for part in parts]) for name in CROSS_ARRAYS}
    ctx.redis.set(cross_key(job.tenant, job.cross_id), encode_arrays(arrays), ex=ctx.records.record_ttl_s)
    return JobOutcome(job_id=job.job_id, ok=True)


ROWS = Handler("rows", export_rows)
CROSS = Handler("cross", cross)
