"""A batch request checked as a whole (models, methods, parameters) before any input runs, then stored."""

from __future__ import annotations

from app.analysis.run import AnalysisError, resolve_params, select_methods
from app.batches.store import create_batch
from app.platform.errors import ApiError
from app.serving.analyses import analysis_inputs
from app.serving.consistency import checked_methods, checked_model
from app.serving.head_inference import check_heads
from app.serving.services import Services
from logprobe.schemas.analysis import AnalysisRequest
from logprobe.schemas.batches import BatchRequest
from logprobe.schemas.consistency import ConsistencyOptions


async def submit_batch(services: Services, tenant: str, body: BatchRequest) -> str:
    """Store a valid batch and return its id; 422 for anything one of its inputs would fail on."""
    limit = services.settings.max_batch_inputs
    if len(body.inputs) > limit:
        raise ApiError(422, "batch_too_large", f"a batch holds at most {limit} inputs", "inputs")
    await services.catalog.card(body.model)  # unknown models fail now, not once per input
    if body.consistency is not None:
        await check_consistency(services, body, body.consistency)
    else:
        stray = next((i for i, item in enumerate(body.inputs) if item.answer is not None), None)
        if stray is not None:
            message = "`answer` is the answer a consistency batch judges; this batch has no `consistency`"
            raise ApiError(422, "invalid_request", message, f"inputs.{stray}.answer")
    # Methods are checked on an input of the batch's kind: chat-only methods (drift) need every input a chat.
    chats = all(item.messages is not None for item in body.inputs)
    source = {"messages": [{"role": "user", "content": "x"}]} if chats else {"text": "x"}
    for i, analysis in enumerate(body.analyses):
        options = analysis.model_dump(exclude={"family"})
        if analysis.reference_model is not None:
            await services.catalog.card(analysis.reference_model, f"analyses.{i}.reference_model")
        try:
            request = AnalysisRequest.model_validate({"model": body.model, **source, **options})
            resolve_params(
                select_methods(
                    analysis.family,
                    analysis.methods,
                    analysis_inputs(analysis.family, request),
                    bool(analysis.heads),
                ),
                analysis.params,
            )
        except AnalysisError as exc:
            raise ApiError(422, exc.code, f"analyses[{i}]: {exc}", exc.param) from exc
        await check_heads(services, tenant, analysis.family, body.model, analysis.heads or [])
    spec = {
        "model": body.model,
        "analyses": [a.model_dump(mode="json") for a in body.analyses],
        "include_tokens": body.include_tokens,
        "retain": body.retain,
    }
    if body.consistency is not None:
        spec["consistency"] = body.consistency.model_dump(mode="json")
    inputs = [item.model_dump(mode="json", exclude_none=True) for item in body.inputs]
    return await create_batch(services.redis, tenant, spec, inputs, services.settings.record_ttl_s, services.objects)


async def check_consistency(services: Services, body: BatchRequest, options: ConsistencyOptions) -> None:
    """A consistency batch: its options suit the model and name known methods; it runs nothing else, and its records
    are kept as /v1/analysis/consistency keeps them (no `retain`)."""
    for field in ("analyses", "retain", "include_tokens"):
        if getattr(body, field):
            message = f"a consistency batch runs /v1/analysis/consistency on each input; it takes no `{field}`"
            raise ApiError(422, "invalid_request", message, field)
    checked_methods(options, "consistency.")
    await checked_model(services, body.model, options, "consistency.")
