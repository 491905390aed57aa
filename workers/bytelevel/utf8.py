"""Which bytes may follow a valid UTF-8 prefix (RFC 3629, Table 3-7 of the Unicode standard), so that byte-level
decoding only ever writes valid text, and where its last character is still incomplete."""

from __future__ import annotations

import numpy as np

_LEADS = {  # a lead byte: how many continuation bytes follow, and the range the first of them lies in
    **{b: (1, 0x80, 0xBF) for b in range(0xC2, 0xE0)},
    0xE0: (2, 0xA0, 0xBF),
    **{b: (2, 0x80, 0xBF) for b in (*range(0xE1, 0xED), 0xEE, 0xEF)},
    0xED: (2, 0x80, 0x9F),
    0xF0: (3, 0x90, 0xBF),
    0xF1: (3, 0x80, 0xBF),
    0xF2: (3, 0x80, 0xBF),
    0xF3: (3, 0x80, 0xBF),
    0xF4: (3, 0x80, 0x8F),
}


def pending(data: bytes) -> int:
    """How many bytes at the end of a valid UTF-8 prefix belong to a character not yet complete (0 to 3)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the last character's first byte
            need = _LEADS.get(byte, (0, 0, 0))[0]
            return back if back <= need else 0
    return 0


def allowed_next(data: bytes) -> np.ndarray:
    """bool [257]: the bytes that keep `data` (a valid UTF-8 prefix) valid, and the end (index 256) where no
    character is incomplete."""
    out = np.zeros(257, dtype=bool)
    tail = pending(data)
    if tail == 0:
        out[:0x80] = True
        out[list(_LEADS)] = True
        out[256] = True
        return out
    lead = data[-tail]
    if tail == 1:
        _, lo, hi = _LEADS[lead]
        out[lo : hi + 1] = True
    else:
        out[0x80:0xC0] = True
    return out
