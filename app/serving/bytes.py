"""Byte-level records: a text's exact per-byte distributions under one model (Phan et al. 2024), from the cache
or through a worker's bytes job; and the byte-level pair that lets two models with different tokenizers be
analysed side by side."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.platform.errors import ApiError
from app.platform.limits import charge
from app.serving.jobs import new_job_id, raise_for_outcome
from app.serving.services import Services
from workers.bytelevel.records import ByteRecordMeta, decode_byte_record
from workers.bytelevel.stats import byte_stats
from workers.contract.cards import ModelCard
from workers.contract.jobs import BytesJob
from workers.contract.keys import bytes_key
from workers.contract.names import ProtocolError, as_bytes, record_id
from workers.contract.records import RecordMeta

MAX_TEXT_BYTES = 4096
DEFAULT_MAX_STATES = 8192


def byte_chars(data: bytes) -> list[str]:
    """The character each byte of a UTF-8 text begins ("" for the continuation bytes of a multi-byte one)."""
    out: list[str] = []
    for ch in data.decode("utf-8"):
        out += [ch] + [""] * (len(ch.encode("utf-8")) - 1)
    return out


@dataclass
class ByteRecord:
    meta: ByteRecordMeta
    text: bytes
    logprob: np.ndarray  # [n]
    logdist: np.ndarray  # [n, 256]
    cached: bool

    def as_record(self) -> tuple[RecordMeta, dict[str, np.ndarray]]:
        """The byte record in the shape of a token record: "token" t is byte t (t >= 1) after a start (0)."""
        meta = RecordMeta(
            record_id=self.meta.record_id,
            tenant=self.meta.tenant,
            model=self.meta.model,
            fingerprint=self.meta.fingerprint,
            kind="score",
            token_ids=[0, *self.text],
            storage="rows",
            hidden_dtype="float64",
            topk=20,
            vocab_size=256,
            hidden_size=0,
        )
        return meta, byte_stats(self.logdist, self.text)


async def _read(services: Services, tenant: str, rid: str, text: bytes) -> ByteRecord | None:
    raw_meta, raw_arrays = map(as_bytes, await services.redis.hmget(bytes_key(tenant, rid), ["meta", "arrays"]))
    if raw_meta is None or raw_arrays is None:
        return None
    try:
        meta, logprob, logdist = decode_byte_record(raw_meta, raw_arrays)
    except ProtocolError as exc:
        raise ApiError(500, "record_corrupt", "the stored byte record failed validation") from exc
    if meta.n_bytes != len(text):
        raise ApiError(500, "record_corrupt", "the stored byte record is of another text")
    return ByteRecord(meta, text, logprob, logdist, True)


async def byte_record(
    services: Services,
    tenant: str,
    card: ModelCard,
    text: str,
    mode: str = "canonical",
    max_states: int = DEFAULT_MAX_STATES,
    param: str = "text",
) -> ByteRecord:
    data = text.encode("utf-8")
    if not data:
        raise ApiError(422, "empty_text", "the text is empty", param)
    if len(data) > MAX_TEXT_BYTES:
        raise ApiError(422, "text_too_long", f"byte-level scoring takes at most {MAX_TEXT_BYTES} bytes", param)
    if card.backend != "hf":
        raise ApiError(
            501,
            "byte_level_unsupported",
            f"{card.name!r} is served by {card.backend}; byte-level scoring runs on the transformers backend",
            "model",
        )
    if card.storage != "hidden":  # the cover states' logits are taken as W·h, which is not this model's
        raise ApiError(
            501,
            "byte_level_unsupported",
            f"{card.name!r} computes its logits other than as W·h of its final hidden states (its records keep full "
            "rows); byte-level scoring reads them as W·h, so it is not offered for this model",
            "model",
        )
    await charge(services.redis, tenant, "tokens", len(data), services.settings.rate_limit_tpm)
    rid = record_id(await services.secret(), tenant, card.fingerprint, list(data), {"kind": "bytes", "mode": mode})
    found = await _read(services, tenant, rid, data)
    if found is not None:
        if found.meta.states > max_states:  # the bound holds for cached records too: same answer either way
            raise ApiError(
                422,
                "cover_set_too_large",
                f"byte-level scoring of this text needs {found.meta.states} forward positions (cover states), over "
                f"the limit of {max_states}",
                "max_states",
            )
        return found
    job = BytesJob(
        job_id=new_job_id(),
        tenant=tenant,
        model=card.name,
        fingerprint=card.fingerprint,
        record_id=rid,
        text=text,
        mode=mode,  # type: ignore[arg-type]
        max_states=max_states,
    )
    raise_for_outcome(await services.jobs.run(job), {"context_length_exceeded": "text"})
    found = await _read(services, tenant, rid, data)
    if found is None:
        raise ApiError(503, "record_evicted", "the byte record was evicted as soon as it was written; retry")
    found.cached = False
    return found
