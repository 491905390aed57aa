"""GET /v1/models: configured and published models, with how each stores its distributions."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import ServicesDep, current_tenant
from app.serving.inputs import top_limit
from logprobe.schemas.models import ModelInfo, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, dependencies=[Depends(current_tenant)])
async def list_models(services: ServicesDep) -> ModelList:
    data = []
    top = top_limit(services.settings, services.settings.max_top_logprobs)
    for name in await services.catalog.names():
        card = await services.catalog.published_card(name)
        workers = await services.catalog.live_workers(name)
        spec = services.catalog.configured.get(name)
        info = ModelInfo(
            id=name,
            ready=card is not None and workers > 0,
            workers=workers,
            max_top_logprobs=top,
            retain=spec.retain if spec is not None else None,
        )
        if card is not None:
            info = info.model_copy(
                update={
                    **card.model_dump(
                        include={
                            "backend",
                            "dtype",
                            "vocab_size",
                            "hidden_size",
                            "context_length",
                            "storage",
                            "retain",
                            "hidden_dtype",
                            "lossy",
                            "rebuild_max_abs_error",
                        }
                    ),
                    "chat_template": card.chat_template is not None,
                    "max_model_len": card.context_length,
                }
            )
        data.append(info)
    return ModelList(data=data)
