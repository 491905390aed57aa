"""Records: their metadata and the binary codec of their arrays (safetensors bytes, validated on read).

Positions: a record of T tokens has T-1 predictions. Array row i holds the distribution that predicted
token i+1, so "position t" (the distribution that predicted token t, t >= 1) is row t-1."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from workers.contract.names import MAX_BLOB_BYTES, ProtocolError, Retain

# A record hash lacking any of these is incomplete (damaged, or hand-edited): treated as absent and scored again.
RECORD_CORE_FIELDS = ("meta", "stats")

# Per aligned position: name -> meaning. All float64.
CROSS_ARRAYS = {
    "kl_pq": "KL(p || q)",
    "kl_qp": "KL(q || p)",
    "js": "Jensen-Shannon divergence (nats)",
    "q_logp_mean": "sum_v q(v) log p(v)",
    "q_logp_m2": "sum_v q(v) (log p(v))^2",
    "p_logq_mean": "sum_v p(v) log q(v)",
    "p_logq_m2": "sum_v p(v) (log q(v))^2",
    "rank_ptop_in_q": "rank under q of p's most likely token",
    "rank_qtop_in_p": "rank under p of q's most likely token",
}


def decode_cross(blob: bytes, positions: int) -> dict[str, np.ndarray]:
    try:
        arrays = st_load(blob)
    except Exception as exc:
        raise ProtocolError(f"unreadable cross statistics: {exc}") from exc
    if set(arrays) != set(CROSS_ARRAYS) or any(
        a.shape != (positions,) or a.dtype != np.float64 or not np.isfinite(a).all() for a in arrays.values()
    ):
        raise ProtocolError("cross statistics failed validation")
    return arrays


class RecordMeta(BaseModel):
    record_id: str
    tenant: str
    model: str
    fingerprint: str
    kind: Literal["score", "generate"]
    token_ids: list[int]
    n_prompt: int | None = None
    finish_reason: str | None = None
    storage: Literal["hidden", "rows"]
    hidden_dtype: str
    topk: int
    vocab_size: int
    hidden_size: int
    retain: Retain = "full"  # "stats": no hidden states (nor rows) were kept
    # transformers' hidden_states indices whose states the record keeps (scored with `layers`), each under
    # layer_field(L) as `hidden` is kept; the final layer's states are `hidden` itself
    layers: list[int] = Field(default_factory=list)
    n_layers: int | None = None  # the model's decoder layers, when `layers` are kept: hidden_states[n_layers] is final
    created_at: float = Field(default_factory=time.time)


def rows_field(storage: str) -> str:
    """The record field that holds what rebuilds full rows: the hidden states, or the rows themselves."""
    return "hidden" if storage == "hidden" else "rows"


def layer_field(layer: int, final_layer: int) -> str:
    """The record field that holds layer `layer`'s states (the final layer's are the record's `hidden`)."""
    return "hidden" if layer == final_layer else f"layer:{layer}"


# Per-position statistics: name -> (dtype, trailing shape symbol). "k" is the captured top-k.
STAT_ARRAYS: dict[str, tuple[str, str | None]] = {
    "logprob": ("float32", None),  # log p(x_t)
    "rank": ("int32", None),  # 1 + #{v : p(v) > p(x_t)}
    "entropy": ("float32", None),  # -sum p log p
    "logp_m2": ("float32", None),  # sum p (log p)^2, the second moment of log p under p
    "kurtosis": ("float32", None),  # Fisher kurtosis of the V probability values
    "logz": ("float32", None),  # logsumexp of the raw logits
    "topk_ids": ("int32", "k"),
    "topk_logprobs": ("float32", "k"),
}


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    return st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


def decode_stats(blob: bytes, positions: int, topk: int) -> dict[str, np.ndarray]:
    """Decode and validate a record's statistics blob: every array present, shaped, typed and finite."""
    if len(blob) > MAX_BLOB_BYTES:
        raise ProtocolError("statistics blob too large")
    try:
        arrays = st_load(blob)
    except Exception as exc:  # safetensors raises its own error types for truncated or bad headers
        raise ProtocolError(f"unreadable statistics blob: {exc}") from exc
    if set(arrays) != set(STAT_ARRAYS):
        raise ProtocolError(f"statistics blob has arrays {sorted(arrays)}")
    for name, (dtype, trailing) in STAT_ARRAYS.items():
        a = arrays[name]
        shape = (positions,) if trailing is None else (positions, topk)
        if a.dtype != np.dtype(dtype) or a.shape != shape:
            raise ProtocolError(f"{name}: expected {dtype}{list(shape)}, got {a.dtype}{list(a.shape)}")
        if a.dtype.kind == "f":
            finite = np.isfinite(a) | (np.isneginf(a) if name in ("logprob", "topk_logprobs") else False)
            if not finite.all():
                raise ProtocolError(f"{name}: NaN or +Inf values")
    return arrays


def decode_meta(blob: bytes) -> RecordMeta:
    try:
        return RecordMeta.model_validate_json(blob)
    except ValidationError as exc:
        raise ProtocolError(f"invalid record metadata: {exc.errors()[:3]}") from exc


def hidden_float32(blob: bytes) -> np.ndarray:
    """A record's stored hidden states (safetensors, float32, float16 or bfloat16) as float32 [positions, D]."""
    _, header, data = _safetensors_parts(blob)
    entry = header.get("hidden")
    if not isinstance(entry, dict):
        raise ProtocolError("no hidden states in the blob")
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    raw = data[begin:end]
    if entry["dtype"] == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        out = bits.view(np.float32)
    elif entry["dtype"] in ("F32", "F16"):
        out = np.frombuffer(raw, dtype="<f4" if entry["dtype"] == "F32" else "<f2").astype(np.float32)
    else:
        raise ProtocolError(f"hidden states of dtype {entry['dtype']}")
    if len(shape) != 2 or out.size != shape[0] * shape[1]:
        raise ProtocolError("hidden states of the wrong shape")
    return out.reshape(shape)


def slice_hidden(blob: bytes, start: int, stop: int) -> bytes:
    """Rows [start, stop) of a stored hidden-state blob, as safetensors in the stored dtype (bytes copied as is)."""
    _, header, data = _safetensors_parts(blob)
    entry = header["hidden"]
    rows, width = entry["shape"]
    begin, end = entry["data_offsets"]
    row_bytes = (end - begin) // max(rows, 1)
    part = data[begin + start * row_bytes : begin + stop * row_bytes]
    head = json.dumps(
        {"hidden": {"dtype": entry["dtype"], "shape": [stop - start, width], "data_offsets": [0, len(part)]}}
    ).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + part


def _safetensors_parts(blob: bytes) -> tuple[int, dict[str, Any], bytes]:
    if len(blob) < 8:
        raise ProtocolError("truncated safetensors blob")
    n = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8 : 8 + n])
    except ValueError as exc:
        raise ProtocolError(f"unreadable safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("unreadable safetensors header")
    return n, header, blob[8 + n :]
