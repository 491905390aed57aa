"""Statistics that need two full distributions at once, from the worker that hosts both models; cached."""

from __future__ import annotations

import numpy as np

from app.platform.errors import ApiError
from app.serving.jobs import new_job_id, raise_for_outcome
from app.serving.services import Services
from app.serving.store import require_rows
from workers.contract.jobs import CrossJob, CrossSide, cross_id
from workers.contract.keys import cross_key, group_name
from workers.contract.names import MAX_JOB_POSITIONS, ProtocolError, as_bytes
from workers.contract.records import RecordMeta, decode_cross


def check_positions(meta: RecordMeta, positions: np.ndarray) -> None:
    """What a worker is asked for is bounded by the record: distinct positions in [1, T-1], so at most T-1."""
    n_tokens = len(meta.token_ids)
    limit = min(n_tokens - 1, MAX_JOB_POSITIONS)
    if positions.size == 0 or positions.size > limit:
        raise ApiError(422, "invalid_span", f"a span of between 1 and {limit} positions of {meta.record_id}", "span")
    if positions.min() < 1 or positions.max() >= n_tokens or np.unique(positions).size != positions.size:
        raise ApiError(422, "invalid_span", f"positions must be distinct and lie in [1, {n_tokens - 1}]", "span")


async def cross_statistics(
    services: Services, tenant: str, p: RecordMeta, p_positions: np.ndarray, q: RecordMeta, q_positions: np.ndarray
) -> dict[str, np.ndarray]:
    """Aligned per-position KL, JS, cross moments and cross ranks between record p and record q."""
    if p_positions.shape != q_positions.shape:
        raise ValueError("both sides need the same number of positions")
    sides = []
    for meta, positions in ((p, p_positions), (q, q_positions)):
        require_rows(meta)
        check_positions(meta, positions)
        card = await services.catalog.card(meta.model)
        sides.append(
            CrossSide(
                record_id=meta.record_id,
                model=meta.model,
                fingerprint=card.fingerprint,
                positions=[int(t) for t in positions],
            )
        )
    side_p, side_q = sides
    cid = cross_id(side_p, side_q)
    raw = as_bytes(await services.redis.get(cross_key(tenant, cid)))
    if raw is None:
        queue = group_name([p.model, q.model])
        if not await services.catalog.live_workers(queue):
            raise ApiError(
                503,
                "pair_unavailable",
                f"no worker hosts both {p.model!r} and {q.model!r}; start one that serves both models",
                "reference_model",
                headers={"Retry-After": "5"},
            )
        job = CrossJob(
            job_id=new_job_id(),
            tenant=tenant,
            model=queue,
            fingerprint=f"{side_p.fingerprint}|{side_q.fingerprint}",
            cross_id=cid,
            p=side_p,
            q=side_q,
        )
        raise_for_outcome(await services.jobs.run(job))
        raw = as_bytes(await services.redis.get(cross_key(tenant, cid)))
        if raw is None:
            raise ApiError(504, "cross_expired", "the cross statistics expired before they were read; retry")
    try:
        return decode_cross(raw, len(p_positions))
    except ProtocolError as exc:
        raise ApiError(500, "cross_corrupt", "stored cross statistics failed validation") from exc
