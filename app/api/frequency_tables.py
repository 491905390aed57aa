"""PUT /v1/frequency-tables/{name}: reference token frequencies counted from a tenant's corpus (for DC-PDD)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.deps import ServicesDep, TenantDep
from app.schemas.analysis import FrequencyTableInfo, FrequencyTableRequest

router = APIRouter(tags=["analysis"])


@router.put("/v1/frequency-tables/{name}", response_model=FrequencyTableInfo)
async def put_frequency_table(
    name: Annotated[str, Path(max_length=64)], body: FrequencyTableRequest, services: ServicesDep, tenant: TenantDep
) -> dict[str, int | str]:
    """Count a corpus with the model's tokenizer and keep the table under `name` (for dc_pdd)."""
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    return await services.frequencies.build(tenant, codec, name, body.texts)
