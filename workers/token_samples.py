"""Tokens sampled from a kept record's own distributions, position by position: the perturbations of Fast-DetectGPT's
sampling discrepancy (Bao et al. 2024), which Lastde++ (Xu et al. 2025, arXiv:2410.06072) scores with Lastde.

Each position's draw is independent of the others (the sampled series is not a text the model wrote: the
reference code samples every position of one forward at once). Draws are made by the inverse of each row's
cumulative distribution at uniforms u = numpy.random.default_rng(seed).random((positions, n)), in float64, so that
the same seed gives the same tokens on any machine and anyone can repeat them from the model's own logits."""

from __future__ import annotations

import numpy as np
import torch

from workers.capture import chunk_rows_for
from workers.contract.jobs import AnyJob, JobOutcome, TokenSamplesJob
from workers.contract.keys import samples_key
from workers.contract.records import encode_arrays
from workers.handlers.base import Context, Handler
from workers.lanes import checkpoint
from workers.outcomes import JobFailed


def sample_logprobs(rows: np.ndarray, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For log-probability rows [n, V] and uniforms [n, k] in [0, 1): the drawn ids [n, k] (the first v whose
    cumulative probability exceeds u times the row's total) and their log-probabilities, in the rows' dtype."""
    logp = torch.from_numpy(np.ascontiguousarray(rows))
    cdf = torch.cumsum(logp.double().exp(), dim=1)
    targets = torch.from_numpy(uniforms).double() * cdf[:, -1:]
    ids = torch.searchsorted(cdf, targets, right=True).clamp_max(rows.shape[1] - 1)
    return ids.numpy(), torch.gather(logp, 1, ids).numpy()


def run_token_samples(job: AnyJob, ctx: Context) -> JobOutcome:
    assert isinstance(job, TokenSamplesJob)
    record = ctx.records.stored(job.tenant, job.record_id, ctx.engines.backend_for(job.model, job.fingerprint))
    rows = np.asarray(job.positions) - 1
    if rows.min() < 0 or rows.max() >= len(record.meta.token_ids) - 1:
        raise JobFailed("invalid_positions", f"positions of {job.record_id} out of range")
    rng = np.random.default_rng(job.seed)  # drawn chunk after chunk: the same stream as one draw of the whole
    out = np.empty((len(rows), job.n_samples), dtype=np.float32)
    step = chunk_rows_for(record.meta.vocab_size)
    for lo in range(0, len(rows), step):
        checkpoint()  # a slice: one chunk of rows rebuilt and sampled
        chunk = rows[lo : lo + step]
        _, out[lo : lo + len(chunk)] = sample_logprobs(record.logprobs(chunk), rng.random((len(chunk), job.n_samples)))
    ctx.redis.set(samples_key(job.tenant, job.samples_id), encode_arrays({"logprob": out}), ex=ctx.records.record_ttl_s)
    return JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)


TOKEN_SAMPLES = Handler("token_samples", run_token_samples)
