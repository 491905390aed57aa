"""Reading one tensor from safetensors bytes with numpy alone, so the client needs no safetensors package.

The format: 8 bytes little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the
data; offsets count from the end of the header.
"""

from __future__ import annotations

import json
import struct

import numpy as np

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1"}


def load_array(blob: bytes, name: str) -> np.ndarray:
    """The tensor `name` as a numpy array (a copy, so it outlives `blob`); ValueError for a malformed blob."""
    if len(blob) < 8:
        raise ValueError("not safetensors: shorter than its header length")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ValueError("not safetensors: header runs past the end")
    header = json.loads(blob[8 : 8 + header_len])
    if name not in header:
        raise ValueError(f"no tensor {name!r} in the blob")
    entry = header[name]
    dtype = DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ValueError(f"unsupported dtype {entry['dtype']!r}")
    begin, end = (8 + header_len + int(o) for o in entry["data_offsets"])
    shape = tuple(int(n) for n in entry["shape"])
    if end > len(blob) or end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
        raise ValueError(f"tensor {name!r} does not fit its offsets")
    count = (end - begin) // np.dtype(dtype).itemsize
    return np.frombuffer(blob, dtype=dtype, count=count, offset=begin).reshape(shape).copy()
