"""Detection calibrations: fitted from labelled texts, stored per tenant under a random id (with a lifetime and
a per-tenant quota), listed, deleted, and the decisions they give to a detect request that names one."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import numpy as np

from app.analysis.calibration import fit_threshold
from app.platform import budget
from app.platform.errors import ApiError
from app.serving import quotas
from app.serving.analyses import analyse
from app.serving.services import Services
from logprobe.schemas.analysis import AnalysisRequest
from logprobe.schemas.calibrations import Calibration, CalibrationRequest, MethodFit
from workers.contract.keys import tenant_tag
from workers.contract.names import as_bytes
from workers.contract.usage import object_usage_key

CONCURRENCY = 4  # texts scored and analysed at once while fitting


def new_calibration_id() -> str:
    return "cal_" + secrets.token_hex(12)


def calibration_key(tenant: str, cid: str) -> str:
    return f"lp:calib:{tenant_tag(tenant)}:{cid}"


def index_key(tenant: str) -> str:
    return f"lp:calib-index:{tenant_tag(tenant)}"


def not_found(cid: str) -> ApiError:
    return ApiError(404, "calibration_not_found", f"calibration {cid!r} not found", "calibration_id")


async def load_calibration(services: Services, tenant: str, cid: str) -> Calibration | None:
    raw = as_bytes(await services.redis.get(calibration_key(tenant, cid)))
    return None if raw is None else Calibration.model_validate_json(raw)


async def get_calibration(services: Services, tenant: str, cid: str) -> Calibration:
    found = await load_calibration(services, tenant, cid)
    if found is None:
        raise not_found(cid)
    return found


async def list_calibrations(services: Services, tenant: str) -> list[Calibration]:
    """The tenant's calibrations, newest first."""
    live = await quotas.live_entries(services.redis, index_key(tenant), lambda c: calibration_key(tenant, c))
    if not live:
        return []
    raws = await services.redis.mget([calibration_key(tenant, cid) for cid in live])
    found = [Calibration.model_validate_json(raw) for raw in raws if raw is not None]
    return sorted(found, key=lambda c: c.created_at, reverse=True)


async def delete_calibration(services: Services, tenant: str, cid: str) -> None:
    pipe = services.redis.pipeline(transaction=True)
    pipe.delete(calibration_key(tenant, cid))
    pipe.hdel(index_key(tenant), cid)
    pipe.hdel(object_usage_key(tenant), calibration_key(tenant, cid))
    removed, *_ = await pipe.execute()
    if not removed:
        raise not_found(cid)


async def detect_decisions(
    services: Services,
    tenant: str,
    calibration_id: str | None,
    model: str,
    reference_model: str | None,
    sequence: dict[str, Any],
) -> dict[str, dict[str, Any]] | None:
    """The decisions of the calibration a detect request names (None when it names none)."""
    if calibration_id is None:
        return None
    calibration = await get_calibration(services, tenant, calibration_id)
    if calibration.model != model or calibration.reference_model != reference_model:
        raise ApiError(
            422,
            "calibration_mismatch",
            f"calibration {calibration_id!r} was fitted for model {calibration.model!r} and reference model "
            f"{calibration.reference_model!r}, not {model!r} and {reference_model!r}",
            "calibration_id",
        )
    return decisions(calibration, sequence)


def decisions(calibration: Calibration, sequence: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per calibrated method: the score, the threshold and whether the text is judged machine-written."""
    out = {}
    for name, fit in calibration.methods.items():
        score = sequence.get(name)
        if score is not None:
            out[name] = {
                "machine": bool(fit.sign * score > fit.threshold),
                "sign": fit.sign,
                "threshold": fit.threshold,
                "target_fpr": calibration.target_fpr,
            }
    return out


def _labelled(body: CalibrationRequest) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Each example's input (text, messages or record_id) and whether it is machine-written, from `examples` (label
    1 machine) or the older `texts` (label "machine"); exactly one of them."""
    if (body.examples is None) == (body.texts is None):
        raise ApiError(
            422, "missing_input", "give the labelled `examples` (or the older `texts`), exactly one of them", "examples"
        )
    if body.texts is not None:
        return [{"text": t.text} for t in body.texts], np.array([t.label == "machine" for t in body.texts])
    inputs = []
    for i, example in enumerate(body.examples or []):
        source = example.model_dump(include={"text", "messages", "record_id"}, exclude_none=True)
        if len(source) != 1:
            raise ApiError(
                422, "missing_input", f"examples[{i}] needs exactly one of text, messages, record_id", f"examples.{i}"
            )
        inputs.append(source)
    return inputs, np.array([e.label == 1 for e in body.examples or []])


async def fit_calibration(
    services: Services, tenant: str, body: CalibrationRequest, creator: str | None = None
) -> Calibration:
    """Score every labelled example, fit a threshold per detect method at the target FPR, and store the result."""
    inputs, labels = _labelled(body)
    field = "examples" if body.examples is not None else "texts"
    if labels.sum() < 2 or (~labels).sum() < 2:
        raise ApiError(422, "too_few_labels", "give at least two human and two machine examples", field)
    limit, index = quotas.MAX_CALIBRATIONS_PER_TENANT, index_key(tenant)
    await quotas.check_room(services.redis, index, limit, "calibrations", lambda c: calibration_key(tenant, c))
    await services.objects.check(services.redis, tenant, 1)  # no room at all: refused before the scoring
    gate = asyncio.Semaphore(CONCURRENCY)

    async def scores(i: int, source: dict[str, Any]) -> dict[str, float | None]:
        async with gate:
            request = AnalysisRequest(
                model=body.model, reference_model=body.reference_model, methods=body.methods, **source
            )
            try:
                answer = await analyse("detect", request, services, tenant)
            except ApiError as exc:  # about one example (its record, its length): say which
                if exc.param not in (*source, None):
                    raise
                param = f"{field}.{i}" + (f".{exc.param}" if exc.param else "")
                raise ApiError(exc.status, exc.code, f"{field}[{i}]: {exc.message}", param, exc.headers) from exc
            return answer["sequence"]  # type: ignore[no-any-return]

    with budget.adding_up():  # its examples' charges are one request's cost: past a minute's budget, a 422 at once
        results = await asyncio.gather(*(scores(i, source) for i, source in enumerate(inputs)))
    fits = {}
    for name in results[0]:
        values = np.array([r[name] if r[name] is not None else np.nan for r in results], dtype=np.float64)
        keep = np.isfinite(values)
        try:
            fit = fit_threshold(values[keep & ~labels], values[keep & labels], body.target_fpr)
        except ValueError:
            continue  # undefined on too many of these texts
        fits[name] = MethodFit(**fit.__dict__)
    deadline = quotas.expires_at()
    calibration = Calibration(
        calibration_id=new_calibration_id(),
        model=body.model,
        reference_model=body.reference_model,
        target_fpr=body.target_fpr,
        created_at=time.time(),
        created_by=creator,
        n_texts=len(inputs),
        expires_at=deadline,
        methods=fits,
    )
    key, stored = calibration_key(tenant, calibration.calibration_id), calibration.model_dump_json()
    await quotas.store_durable(services.redis, key, stored, deadline)
    entry = {"model": calibration.model, "created_at": calibration.created_at}
    try:
        await services.objects.record(services.redis, tenant, key, len(stored.encode()))
        await quotas.claim(
            services.redis,
            index,
            calibration.calibration_id,
            entry,
            limit,
            "calibrations",
            lambda c: calibration_key(tenant, c),
        )
    except ApiError:
        await services.redis.delete(key)
        await services.objects.release(services.redis, tenant, key)
        raise
    return calibration
