"""Tokens sampled at each position from a record's own distributions (workers/token_samples.py), by the worker that
rebuilds its rows; cached per (record, positions, count, seed)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load as st_load

from app.platform.errors import ApiError
from app.serving.cross import check_positions
from app.serving.jobs import new_job_id, raise_for_outcome
from app.serving.services import Services
from app.serving.store import require_rows
from workers.contract.jobs import TokenSamplesJob, samples_id
from workers.contract.keys import samples_key
from workers.contract.names import as_bytes
from workers.contract.records import RecordMeta


def _decoded(raw: bytes, positions: int, n_samples: int) -> np.ndarray:
    try:
        logprob = st_load(raw)["logprob"]
    except Exception as exc:
        raise ApiError(500, "samples_corrupt", "stored token samples failed validation") from exc
    if logprob.shape != (positions, n_samples) or logprob.dtype != np.float32 or not np.all(logprob <= 0.0):
        raise ApiError(500, "samples_corrupt", "stored token samples failed validation")
    return logprob.astype(np.float64)


async def sampled_logprobs(
    services: Services, tenant: str, meta: RecordMeta, positions: np.ndarray, n_samples: int, seed: int
) -> np.ndarray:
    """log p(x~) [positions, n_samples] of tokens x~ drawn independently at each position from p itself."""
    require_rows(meta)
    check_positions(meta, positions)
    card = await services.catalog.card(meta.model)
    listed = [int(t) for t in positions]
    sid = samples_id(meta.record_id, listed, n_samples, seed)
    raw = as_bytes(await services.redis.get(samples_key(tenant, sid)))
    if raw is None:
        job = TokenSamplesJob(
            job_id=new_job_id(),
            tenant=tenant,
            model=meta.model,
            fingerprint=card.fingerprint,
            samples_id=sid,
            record_id=meta.record_id,
            positions=listed,
            n_samples=n_samples,
            seed=seed,
        )
        raise_for_outcome(await services.jobs.run(job))
        raw = as_bytes(await services.redis.get(samples_key(tenant, sid)))
        if raw is None:
            raise ApiError(504, "samples_expired", "the token samples expired before they were read; retry")
    return _decoded(raw, len(listed), n_samples)
