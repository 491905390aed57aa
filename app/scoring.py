"""Getting a record for token ids: from the cache when it is there, else through a worker job."""

from __future__ import annotations

from app.jobs import new_job_id, raise_for_outcome
from app.services import Services
from workers.protocol import ModelCard, ScoreJob, record_id

SCORE_OPTIONS = {"kind": "score"}


async def ensure_scored(services: Services, tenant: str, card: ModelCard, ids: list[int]) -> tuple[str, bool]:
    """The record id for these tokens and whether it was already cached (no job was created then)."""
    rid = record_id(await services.secret(), tenant, card.fingerprint, ids, SCORE_OPTIONS)
    if await services.store.exists(tenant, rid):
        return rid, True
    job = ScoreJob(
        job_id=new_job_id(), tenant=tenant, model=card.name, fingerprint=card.fingerprint, record_id=rid, token_ids=ids
    )
    raise_for_outcome(await services.jobs.run(job))
    return rid, False
