"""POST /v1/analysis/lens: every layer's next-token distribution, read through the model's own final norm and
unembedding (the logit lens) or a trained tuned lens, computed by a worker from one forward."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.answers import json_answer
from app.api.deps import ServicesDep, TenantDep
from app.serving.lens import lens
from logprobe.schemas.lens import LensRequest, LensResponse

router = APIRouter(tags=["analysis"])


@router.post("/v1/analysis/lens", response_model=LensResponse)
async def logit_lens(body: LensRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Per layer and position: the token's logprob and rank, the entropy, KL(final || layer) and the top
    alternatives (nostalgebraist 2020); per position, the layer from which the final top token stays on top."""
    return json_answer(await lens(body, services, tenant))
