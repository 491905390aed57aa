"""GET /v1/records/{id}: a record's metadata and per-token fields; /logprobs: its full distributions; /hidden: its
final hidden states; /features: the per-position features heads read."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from app.api.deps import ServicesDep, TenantDep
from app.platform.errors import ApiError
from app.serving.inputs import top_k
from app.serving.jobs import new_job_id, raise_for_outcome
from app.serving.layers import layer_blob
from app.serving.scoring import upgraded, with_last_state
from app.serving.services import Services
from app.serving.store import require_rows
from app.serving.tokens import token_rows
from logprobe.schemas.score import RecordResponse
from workers.contract.head_features import PAWN_FEATURES, los_features, pawn_features
from workers.contract.jobs import RowsJob
from workers.contract.records import RecordMeta, slice_hidden

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
                "retain",
                "hidden_dtype",
                "vocab_size",
                "layers",
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
    upgrade: Annotated[bool, Query(description=UPGRADE)] = False,
) -> Response:
    check_export(services.settings.allow_export)
    meta = await with_rows(services, tenant, record_id, upgrade)
    n_tokens = len(meta.token_ids)
    stop = page(start, stop, n_tokens)
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
    size = await services.store.export_size(job.job_id)
    if size == 0:
        raise ApiError(504, "export_expired", "the exported rows expired before they were read; retry")
    return StreamingResponse(  # in pieces, as the client reads: the gateway never holds a whole export
        services.store.export_chunks(job.job_id, size),
        media_type="application/octet-stream",
        headers={"X-Logprobe-Start": str(start), "X-Logprobe-Stop": str(stop), "Content-Length": str(size)},
    )


UPGRADE = "a record that keeps statistics only (retain 'stats') is re-scored first and keeps full rows from then on"


async def with_rows(services: Services, tenant: str, record_id: str, upgrade: bool) -> RecordMeta:
    """The record's metadata, if it keeps full rows (upgraded first when asked); else 409 rows_not_retained."""
    meta = await services.store.meta(tenant, record_id)
    if upgrade and meta.retain != "full":
        meta, _ = await upgraded(services, tenant, *await services.store.require(tenant, record_id))
    require_rows(meta)
    return meta


def check_export(allowed: bool) -> None:
    if not allowed:
        raise ApiError(
            403, "export_disabled", "this deployment does not export full distributions; the analyses remain available"
        )


def page(start: int, stop: int | None, n_tokens: int, end: int | None = None) -> int:
    """The page's stop (default: n_tokens); 422 unless 1 <= start < stop <= end (default: n_tokens)."""
    stop = n_tokens if stop is None else stop
    end = n_tokens if end is None else end
    if not start < stop <= end:
        raise ApiError(422, "invalid_positions", f"positions must satisfy 1 <= start < stop <= {end}", "stop")
    return stop


@router.get(
    "/v1/records/{record_id}/hidden",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "safetensors with `hidden`: [positions, hidden size] in the model's dtype; row i is the "
            "final hidden state that predicted token start + i (position T, the number of tokens, is the last "
            "token's own state, which predicts what follows the text)",
        }
    },
)
async def get_hidden(
    record_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    start: Annotated[
        int,
        Query(ge=1, description="first position (the state that predicted token start: token start - 1's state)"),
    ] = 1,
    stop: Annotated[
        int | None,
        Query(
            ge=2,
            description="one past the last position; default: the number of tokens T; up to T + 1 to include the last "
            "token's own state (position T, which predicts what follows the text)",
        ),
    ] = None,
    upgrade: Annotated[bool, Query(description=UPGRADE)] = False,
    layer: Annotated[
        int | None,
        Query(
            ge=0,
            description="a layer the record kept (scored with `layers`): transformers' hidden_states[layer], 0 = the "
            "embeddings, the model's layer count = the final states; default: the final states. Positions up to T",
        ),
    ] = None,
) -> Response:
    """The stored final hidden states, as the worker computed them (log_softmax(W·h) is the distribution). Position
    t's state is token t - 1's, so positions 1..T cover every token's state; the last (position T), which a record
    does not keep, comes from the record of the same tokens followed by the end-of-text token, scored if needed.
    With `layer`: that kept layer's states, positions 1..T - 1."""
    check_export(services.settings.allow_export)
    meta = await with_rows(services, tenant, record_id, upgrade)
    n_tokens = len(meta.token_ids)
    stop = page(start, stop, n_tokens, n_tokens + 1 if layer is None else n_tokens)
    itemsize = {"float32": 4}.get(meta.hidden_dtype, 2)
    max_positions = max(1, services.settings.max_export_bytes // (itemsize * meta.hidden_size))
    if stop - start > max_positions:
        raise ApiError(
            422, "export_too_large", f"at most {max_positions} positions per request; page with start/stop", "stop"
        )
    if layer is not None:
        stored = await layer_blob(services, tenant, meta, layer)
    else:
        source = await with_last_state(services, tenant, meta) if stop > n_tokens else meta
        stored = await services.store.hidden_blob(tenant, source)
    headers = {"X-Logprobe-Start": str(start), "X-Logprobe-Stop": str(stop), "X-Logprobe-Dtype": meta.hidden_dtype}
    if layer is not None:
        headers["X-Logprobe-Layer"] = str(layer)
    return Response(slice_hidden(stored, start - 1, stop - 1), media_type="application/octet-stream", headers=headers)


@router.get("/v1/records/{record_id}/features")
async def get_features(
    record_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    start: Annotated[int, Query(ge=1)] = 1,
    stop: Annotated[int | None, Query(ge=2)] = None,
) -> dict[str, object]:
    """Per position, the features heads read: PAWN's token features and LOS's output signature (the sorted top-k
    probabilities, as many as the export policy lets out, and the actual token's probability)."""
    meta, stats = await services.store.require(tenant, record_id)
    stop = page(start, stop, len(meta.token_ids))
    rows = np.arange(start - 1, stop - 1)
    k = min(meta.topk, services.settings.top_alternatives())
    return {
        "record_id": record_id,
        "model": meta.model,
        "start": start,
        "stop": stop,
        "pawn": {"names": list(PAWN_FEATURES), "values": pawn_features(stats, rows).tolist()},
        "los": {
            "names": [f"p_top{i + 1}" for i in range(k)] + ["p_token"],
            "values": los_features(stats, rows, k).tolist(),
        },
    }
