"""Answers serialized straight to JSON bytes, for routes whose answers are large (thousands of per-token values).

FastAPI would validate such a dict against its response model and then serialize it: for a 1,000-token analysis
the validation alone costs more than the analysis. These routes keep their response model for the OpenAPI schema
(schemathesis checks every answer against it) and hand FastAPI the finished bytes.
"""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic_core import to_json


def json_answer(payload: dict[str, Any]) -> Response:
    """`payload` as JSON (NaN and infinities as null, as the response models serialize them)."""
    return Response(to_json(payload, inf_nan_mode="null"), media_type="application/json")
