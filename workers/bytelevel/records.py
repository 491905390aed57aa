"""A byte-level record: one text's per-byte log-probabilities and next-byte distributions under one model, as a
Redis hash under protocol.bytes_key ("meta" JSON, "arrays" safetensors). Gateway and workers both read it."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from safetensors.numpy import load as st_load

from workers.contract.names import ProtocolError
from workers.contract.records import encode_arrays


class ByteRecordMeta(BaseModel):
    record_id: str
    tenant: str
    model: str
    fingerprint: str
    mode: Literal["canonical", "all"]
    n_bytes: int
    states: int  # forward positions the cover plan took
    created_at: float = Field(default_factory=time.time)


def encode_byte_record(meta: ByteRecordMeta, logprob: np.ndarray, logdist: np.ndarray) -> dict[str, bytes | str]:
    return {
        "meta": meta.model_dump_json(),
        "arrays": encode_arrays({"logprob": logprob.astype(np.float64), "logdist": logdist.astype(np.float64)}),
    }


def decode_byte_record(meta_blob: bytes, arrays_blob: bytes) -> tuple[ByteRecordMeta, np.ndarray, np.ndarray]:
    """(meta, logprob [n], logdist [n, 256]), validated: shapes, dtypes, no NaN, no +inf."""
    try:
        meta = ByteRecordMeta.model_validate_json(meta_blob)
        arrays = st_load(arrays_blob)
    except Exception as exc:  # pydantic.ValidationError, or safetensors errors of its own types
        raise ProtocolError(f"unreadable byte record: {exc}") from exc
    logprob, logdist = arrays.get("logprob"), arrays.get("logdist")
    n = meta.n_bytes
    if logprob is None or logdist is None or logprob.shape != (n,) or logdist.shape != (n, 256):
        raise ProtocolError("byte record arrays of the wrong shape")
    for a in (logprob, logdist):
        if a.dtype != np.float64 or np.isnan(a).any() or np.isposinf(a).any():
            raise ProtocolError("byte record arrays hold NaN or +inf")
    return meta, logprob, logdist
