"""GET /v1/records/{id}: a record's metadata and per-token fields; /logprobs: its full distributions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import ServicesDep, TenantDep
from app.platform.errors import ApiError
from app.schemas.score import RecordResponse
from app.serving.inputs import top_k
from app.serving.jobs import new_job_id, raise_for_outcome
from app.serving.tokens import token_rows
from workers.protocol import RowsJob

router = APIRouter(tags=["records"])


@router.get("/v1/records/{record_id}", response_model=RecordResponse)
async def get_record(
    record_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    top_logprobs: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, object]:
    settings = services.settings
    k = top_k(top_logprobs, settings, settings.max_top_logprobs)
    meta, stats = await services.store.require(tenant, record_id)
    card = await services.catalog.card(meta.model)
    codec = await services.catalog.codec(card)
    return {
        **meta.model_dump(
            include={
                "record_id",
                "model",
                "kind",
                "n_prompt",
                "finish_reason",
                "created_at",
                "storage",
                "hidden_dtype",
                "vocab_size",
            }
        ),
        "n_tokens": len(meta.token_ids),
        "tokens": token_rows(meta, stats, codec, k),
    }


@router.get(
    "/v1/records/{record_id}/logprobs",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "safetensors with `logprobs`: float32 [positions, vocab]",
        }
    },
)
async def get_logprobs(
    record_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    start: Annotated[int, Query(ge=1, description="first position (the distribution that predicted token start)")] = 1,
    stop: Annotated[int | None, Query(ge=2, description="one past the last position; default: the end")] = None,
) -> Response:
    if not services.settings.allow_export:
        raise ApiError(
            403, "export_disabled", "this deployment does not export full distributions; the analyses remain available"
        )
    meta = await services.store.meta(tenant, record_id)
    n_tokens = len(meta.token_ids)
    stop = n_tokens if stop is None else stop
    if not start < stop <= n_tokens:
        raise ApiError(422, "invalid_positions", f"positions must satisfy 1 <= start < stop <= {n_tokens}", "stop")
    max_positions = max(1, services.settings.max_export_bytes // (4 * meta.vocab_size))
    if stop - start > max_positions:
        raise ApiError(
            422,
            "export_too_large",
            f"at most {max_positions} positions of {meta.vocab_size} floats per request; page with start/stop",
            "stop",
        )
    card = await services.catalog.card(meta.model)
    job = RowsJob(
        job_id=new_job_id(),
        tenant=tenant,
        model=meta.model,
        fingerprint=card.fingerprint,
        record_id=record_id,
        start=start,
        stop=stop,
    )
    raise_for_outcome(await services.jobs.run(job))
    blob = await services.store.take_export(job.job_id)
    if blob is None:
        raise ApiError(504, "export_expired", "the exported rows expired before they were read; retry")
    return Response(
        blob,
        media_type="application/octet-stream",
        headers={"X-Logprobe-Start": str(start), "X-Logprobe-Stop": str(stop)},
    )
