"""POST /v1/bytes: each byte's exact conditional log-probability of a text (Phan et al. 2024, "Exact Byte-Level
Probabilities from Tokenized Language Models"), summing over the tokenizations that cover it.

A separate endpoint rather than a `level` of /v1/score: its rows are bytes, not tokens (no token ids, no
alternatives from a vocabulary), and its cost (one forward position per cover state) is bounded by its own
parameter."""

from __future__ import annotations

import math

from fastapi import APIRouter

from app.api.deps import ServicesDep, TenantDep
from app.serving.bytes import byte_chars, byte_record
from logprobe.schemas.bytes import BytesRequest, BytesResponse

router = APIRouter(tags=["scoring"])


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@router.post("/v1/bytes", response_model=BytesResponse)
async def score_bytes(body: BytesRequest, services: ServicesDep, tenant: TenantDep) -> dict[str, object]:
    card = await services.catalog.card(body.model)
    record = await byte_record(services, tenant, card, body.text, body.mode, body.max_states)
    chars = byte_chars(record.text)
    rows = []
    for m, (byte, lp) in enumerate(zip(record.text, record.logprob.tolist(), strict=True)):
        row: dict[str, object] = {"offset": m, "byte": byte, "text": chars[m], "logprob": _finite(lp)}
        if body.distributions:
            row["distribution"] = [_finite(v) for v in record.logdist[m].tolist()]
        rows.append(row)
    return {
        "record_id": record.meta.record_id,
        "model": card.name,
        "mode": record.meta.mode,
        "cached": record.cached,
        "n_bytes": len(record.text),
        "states": record.meta.states,
        "logprob": _finite(float(record.logprob.sum())),
        "bytes": rows,
    }
