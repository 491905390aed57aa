"""Frequency tables (for DC-PDD): PUT /v1/frequency-tables/{name} counts a tenant's corpus, GET lists the tenant's
tables and the packaged `default`, GET and DELETE /v1/frequency-tables/{name} (`model` picks one tokenizer's)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from app.api.deps import ServicesDep, TenantDep
from app.platform.errors import ApiError
from app.serving.frequencies import not_found
from app.serving.services import Services
from logprobe.schemas.analysis import DEFAULT_TABLE, FrequencyTableRequest
from logprobe.schemas.tables import FrequencyTable, FrequencyTableList, StoredFrequencyTable

router = APIRouter(tags=["analysis"])
Name = Annotated[str, Path(max_length=64)]
ModelQuery = Annotated[str | None, Query(description="only the table for this model's tokenizer")]
PACKAGED = FrequencyTable(name=DEFAULT_TABLE, packaged=True)


async def tokenizer_of(services: Services, model: str | None) -> str | None:
    if model is None:
        return None
    return (await services.catalog.codec(await services.catalog.card(model))).tokenizer_id


@router.put("/v1/frequency-tables/{name}", response_model=StoredFrequencyTable)
async def put_frequency_table(
    name: Name, body: FrequencyTableRequest, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    """Count a corpus with the model's tokenizer and keep the table under `name` (for dc_pdd)."""
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    return await services.frequencies.build(tenant, codec, name, body.texts)


@router.get("/v1/frequency-tables", response_model=FrequencyTableList)
async def list_tables(services: ServicesDep, tenant: TenantDep) -> FrequencyTableList:
    tables = await services.frequencies.tables(tenant)
    return FrequencyTableList(data=[PACKAGED, *(FrequencyTable.model_validate(t) for t in tables)])


@router.get("/v1/frequency-tables/{name}", response_model=FrequencyTable)
async def get_table(name: Name, services: ServicesDep, tenant: TenantDep, model: ModelQuery = None) -> FrequencyTable:
    tokenizer = await tokenizer_of(services, model)  # an unknown model is a 404, for `default` too
    if name == DEFAULT_TABLE:
        return PACKAGED
    found = await services.frequencies.named(tenant, name, tokenizer)
    if not found:
        raise not_found(name, model, "name")
    if len(found) > 1:
        raise ApiError(
            422, "ambiguous_table", f"{len(found)} tables are called {name!r}: name the `model` whose is meant", "model"
        )
    return FrequencyTable.model_validate(found[0])


@router.delete("/v1/frequency-tables/{name}", status_code=204)
async def delete_table(name: Name, services: ServicesDep, tenant: TenantDep, model: ModelQuery = None) -> Response:
    """Delete the table (every tokenizer's of that name, unless `model` picks one)."""
    if name == DEFAULT_TABLE:
        raise ApiError(
            403, "frequency_table_protected", f"the packaged {DEFAULT_TABLE!r} table cannot be deleted", "name"
        )
    if not await services.frequencies.delete(tenant, name, await tokenizer_of(services, model)):
        raise not_found(name, model, "name")
    return Response(status_code=204)
