"""Two records aligned position by position: two models on the same tokens, or one model with and without a
context before the text. p is the side under study, q the reference."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from app.platform.errors import ApiError
from app.schemas.tokens import ChatMessage
from app.serving.inputs import check_length, input_ids
from app.serving.scoring import scored_record
from app.serving.services import Services
from app.serving.text import TextCodec
from workers.protocol import RecordMeta


@dataclass
class Side:
    meta: RecordMeta
    stats: dict[str, np.ndarray]
    cached: bool


@dataclass
class Pair:
    p: Side
    q: Side
    codec: TextCodec
    offset: int  # p position = q position + offset
    message_ends: list[int] | None = None  # token index where each chat message ends (two-model chats)

    def p_positions(self, q_positions: np.ndarray) -> np.ndarray:
        return q_positions + self.offset

    def turns(self, q_positions: np.ndarray) -> list[tuple[int, int]] | None:
        """Index ranges into q_positions, one per chat message (positions must be increasing)."""
        if self.message_ends is None or np.any(np.diff(q_positions) <= 0):
            return None
        starts = [0, *self.message_ends[:-1]]
        return [
            (int(np.searchsorted(q_positions, a)), int(np.searchsorted(q_positions, b)))
            for a, b in zip(starts, self.message_ends, strict=True)
        ]


async def _scored(services: Services, tenant: str, model: str, ids: list[int]) -> Side:
    card = await services.catalog.card(model)
    return Side(*await scored_record(services, tenant, card, ids))


async def model_pair(
    services: Services,
    tenant: str,
    model: str,
    reference_model: str,
    text: str | None,
    messages: list[ChatMessage] | None,
) -> Pair:
    """The same tokens under two models; they must share a tokenizer, so that positions mean the same."""
    codecs = []
    for name in (model, reference_model):
        codecs.append(await services.catalog.codec(await services.catalog.card(name)))
    codec_p, codec_q = codecs
    if codec_p.tokenizer_id != codec_q.tokenizer_id or codec_p.card.vocab_size != codec_q.card.vocab_size:
        raise ApiError(
            422,
            "tokenizer_mismatch",
            f"{model!r} and {reference_model!r} tokenize differently, so their "
            "distributions cannot be compared position by position",
            "reference_model",
        )
    limit = services.settings.max_positions
    ids = input_ids(codec_p, text, messages, False, limit)
    if input_ids(codec_q, text, messages, False, limit) != ids:
        raise ApiError(422, "tokenizer_mismatch", "the two models' chat templates give different tokens", "messages")
    check_length(codec_q.card, len(ids), limit)
    p, q = await asyncio.gather(_scored(services, tenant, model, ids), _scored(services, tenant, reference_model, ids))
    ends = None
    if messages is not None:
        ends = [
            len(codec_p.encode_chat([m.model_dump() for m in messages[: i + 1]], False)) for i in range(len(messages))
        ]
    return Pair(p=p, q=q, codec=codec_p, offset=0, message_ends=ends)


async def context_pair(services: Services, tenant: str, model: str, context: str, text: str | None) -> Pair:
    """The text's tokens under one model, after the context (p) and on their own (q)."""
    if text is None:
        raise ApiError(422, "missing_input", "a `context` comparison needs a `text`", "text")
    if not context:
        raise ApiError(422, "empty_text", "the context is empty", "context")
    codec = await services.catalog.codec(await services.catalog.card(model))
    limit = services.settings.max_positions
    alone = input_ids(codec, text, None, False, limit)
    bos = 1 if codec.card.add_bos and alone[:1] == [codec.card.bos_token_id] else 0
    context_ids = codec.encode(context)
    with_context = context_ids + alone[bos:]
    check_length(codec.card, len(with_context), limit)
    p, q = await asyncio.gather(_scored(services, tenant, model, with_context), _scored(services, tenant, model, alone))
    return Pair(p=p, q=q, codec=codec, offset=len(context_ids) - bos)
