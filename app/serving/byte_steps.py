"""Contrastive decoding across tokenizers: which level a request runs at, and its byte steps as the answer shows
them (workers/bytelevel/decoding.py steps by bytes; id 256 is the end of text)."""

from __future__ import annotations

from typing import Any

from app.platform.errors import ApiError
from app.serving.text import TextCodec, share_tokenizer
from workers.contract.jobs import DecodeStep

END = 256
SYMBOLS = 257  # the 256 bytes and the end: what a byte-level step chooses among


def decode_level(requested: str, codecs: list[TextCodec]) -> str:
    """ "token" or "byte": auto takes tokens where every view's model shares one tokenizer. Byte-level decoding runs
    on the transformers backend only (501 otherwise, as POST /v1/bytes)."""
    shared = share_tokenizer(codecs)
    level = ("token" if shared else "byte") if requested == "auto" else requested
    if level == "token" and not shared:
        raise ApiError(
            422,
            "tokenizer_mismatch",
            "every view's model must share one tokenizer at level token; level byte (or auto) decodes by bytes",
            "views",
        )
    if level == "byte":
        for codec in codecs:
            if codec.card.backend != "hf":
                raise ApiError(
                    501,
                    "byte_level_unsupported",
                    f"{codec.card.name!r} is served by {codec.card.backend}; byte-level decoding runs on the "
                    "transformers backend",
                    "views",
                )
    return level


def symbol_text(symbol: int) -> str:
    """An alternative byte as text: the character for ASCII, <0xNN> for any other byte, "" for the end."""
    if symbol == END:
        return ""
    return chr(symbol) if symbol < 0x80 else f"<0x{symbol:02X}>"


def byte_step_out(step: DecodeStep) -> dict[str, Any]:
    """A byte step in the shape of a token step: id the byte (256 the end, `special`), text the character it
    begins."""
    return {
        "id": step.token,
        "text": step.text or "",
        "special": step.token == END,
        "top_logprobs": [
            {"id": i, "text": symbol_text(i), "logprob": v}
            for i, v in zip(step.top_ids, step.top_logprobs, strict=True)
        ],
        "views": [{"logprob": lp, "rank": r} for lp, r in zip(step.view_logprobs, step.view_ranks, strict=True)],
        "contrasted": step.contrasted,
        "logprob": step.logprob,
        "premature_layer": step.premature_layer,
    }


def byte_text(completion: list[int]) -> str:
    return bytes(b for b in completion if b < END).decode("utf-8", "replace")
