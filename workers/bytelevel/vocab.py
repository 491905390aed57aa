"""Each token of a vocabulary as the raw bytes it stands for, sorted so that the tokens that begin with any given
bytes form one contiguous range (what the cover sums of workers.bytelevel.covers read).

Two conventions are understood: byte-level BPE (GPT-2's printable stand-ins for bytes, as SmolLM2 uses) and
SentencePiece-style pieces with byte fallback (`▁` for a space, `<0xNN>` for a raw byte, as Gemma uses). Special
tokens (BOS, EOS, chat markers, unused slots) stand for no bytes: they are left out of every byte sum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def gpt2_unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: the printable character that stands for each of the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def byte_level_bytes(piece: str) -> bytes | None:
    """A byte-level BPE token's bytes; None if it holds a character that stands for no byte."""
    table = gpt2_unicode_to_byte()
    try:
        return bytes(table[ch] for ch in piece)
    except KeyError:
        return None


def sentencepiece_bytes(piece: str) -> bytes:
    """A SentencePiece token's bytes: `<0xNN>` is that raw byte, `▁` a space, anything else its UTF-8."""
    match = _BYTE_PIECE.match(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


@dataclass(frozen=True)
class ByteVocab:
    """token_bytes[v]: the bytes of token v (None for special tokens). `order` lists the byte tokens sorted by
    their bytes; `table[i, d]` is the d-th byte of the i-th of them (0 past its end), `lengths[i]` its length."""

    token_bytes: tuple[bytes | None, ...]
    order: np.ndarray
    sorted_bytes: tuple[bytes, ...]
    table: np.ndarray
    lengths: np.ndarray
    byte_tokens: tuple[int | None, ...]  # the token that is exactly byte b, if any
    first_starts: np.ndarray  # where each first byte's run of sorted tokens starts
    first_bytes: np.ndarray  # that first byte

    @classmethod
    def from_token_bytes(cls, token_bytes: list[bytes | None]) -> ByteVocab:
        ids = [v for v, b in enumerate(token_bytes) if b]  # empty tokens move no byte: left out like specials
        ids.sort(key=lambda v: token_bytes[v] or b"")
        sorted_bytes = tuple(token_bytes[v] or b"" for v in ids)
        width = max((len(b) for b in sorted_bytes), default=1)
        table = np.zeros((len(ids), width), dtype=np.uint8)
        for i, b in enumerate(sorted_bytes):
            table[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        singles: list[int | None] = [None] * 256
        for v in ids:
            b = token_bytes[v] or b""
            if len(b) == 1 and singles[b[0]] is None:
                singles[b[0]] = v
        starts = np.flatnonzero(np.r_[True, np.diff(table[:, 0].astype(np.int64)) != 0]) if ids else np.zeros(0, int)
        return cls(
            first_starts=starts.astype(np.int64),
            first_bytes=table[starts, 0].astype(np.int64),
            token_bytes=tuple(b or None for b in token_bytes),
            order=np.asarray(ids, dtype=np.int64),
            sorted_bytes=sorted_bytes,
            table=table,
            lengths=np.asarray([len(b) for b in sorted_bytes], dtype=np.int64),
            byte_tokens=tuple(singles),
        )

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    def prefix_range(self, lo: int, hi: int, depth: int, byte: int) -> tuple[int, int]:
        """Within [lo, hi), the tokens that share their first `depth` bytes, those whose byte `depth` is `byte`."""
        first = lo
        while first < hi and self.lengths[first] <= depth:  # the token equal to the shared prefix sorts first
            first += 1
        if depth >= self.table.shape[1]:
            return hi, hi
        column = self.table[first:hi, depth]
        return first + int(np.searchsorted(column, byte, "left")), first + int(np.searchsorted(column, byte, "right"))


def vocab_from_tokenizer(tokenizer: Any) -> ByteVocab:
    """The ByteVocab of a transformers tokenizer (fast), byte-level BPE or SentencePiece with byte fallback."""
    size = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = {int(i) for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    special |= {int(i) for i in tokenizer.all_special_ids}
    added = {int(i) for i in tokenizer.added_tokens_decoder} - special
    decoder = str(tokenizer.backend_tokenizer.decoder.__getstate__()) if tokenizer.backend_tokenizer.decoder else ""
    byte_level = "ByteLevel" in decoder
    token_bytes: list[bytes | None] = []
    for v, piece in enumerate(pieces):
        if v in special or piece is None:
            token_bytes.append(None)
        elif v in added:  # added (non-special) tokens hold their text as is
            token_bytes.append(piece.encode("utf-8"))
        elif byte_level:
            token_bytes.append(byte_level_bytes(piece))
        else:
            token_bytes.append(sentencepiece_bytes(piece))
    return ByteVocab.from_token_bytes(token_bytes)
