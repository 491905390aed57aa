"""Two records aligned position by position: two models on the same tokens, or one model with and without a
context before the text. p is the side under study, q the reference. Also where a chat's turns lie in its
tokens (drift's turns, the `last_turn` span)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.platform.errors import ApiError
from app.serving.bytes import byte_record
from app.serving.chat_template import ChatTemplateError
from app.serving.inputs import check_length, input_ids, text_token_ids
from app.serving.scoring import record_for, scored_record
from app.serving.services import Services
from app.serving.text import TextCodec, share_tokenizer
from logprobe.schemas.tokens import ChatMessage
from workers.bytelevel.stats import byte_cross
from workers.contract.names import Retain
from workers.contract.records import RecordMeta


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
    shown: RecordMeta  # the record whose positions a span names (q's positions), with its prompt length if any
    message_ends: list[int] | None = None  # token index where each chat message ends (two-model chats)
    byte_cross: dict[str, np.ndarray] | None = None  # models that tokenize differently: cross statistics per byte

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


def _chat_ids(codec: TextCodec, messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
    try:
        return codec.encode_chat(messages, add_generation_prompt)
    except (LookupError, ChatTemplateError) as exc:
        raise ApiError(
            422, "chat_template_error", f"the chat template refused part of the chat: {exc}", "messages"
        ) from exc


def message_ends(codec: TextCodec, messages: list[ChatMessage]) -> list[int]:
    """The token index where each message ends: the length of the chat rendered up to and including it."""
    dumped = [m.model_dump() for m in messages]
    return [len(_chat_ids(codec, dumped[: i + 1], False)) for i in range(len(dumped))]


def chat_reply(codec: TextCodec, messages: list[ChatMessage], ids: list[int]) -> tuple[int, int] | None:
    """[start, stop) token indexes of the last assistant turn's reply, None unless the chat ends with one.

    The reply starts where the chat rendered with that turn emptied stops agreeing with `ids` (after the
    template's header; an empty reply starts at its end-of-turn token) and ends with the last end-of-turn
    token (what a generation would produce), so the template's text after it is not part of the reply."""
    if messages[-1].role != "assistant":
        return None
    eos = set(codec.card.eos_token_ids)
    dumped = [m.model_dump() for m in messages]
    emptied = _chat_ids(codec, [*dumped[:-1], {**dumped[-1], "content": ""}], False)
    n = min(len(emptied), len(ids))
    differ = np.flatnonzero(np.asarray(emptied[:n]) != np.asarray(ids[:n]))
    start = int(differ[0]) if differ.size else n
    closing = [i for i in range(len(emptied)) if emptied[i] in eos]
    if not differ.size and closing:  # the reply is empty: only its end-of-turn token
        start = closing[-1]
    ends = [i for i in range(start, len(ids)) if ids[i] in eos]
    return start, (ends[-1] + 1 if ends else len(ids))


async def _scored(services: Services, tenant: str, model: str, ids: list[int], retain: Retain | None) -> Side:
    card = await services.catalog.card(model)
    return Side(*await scored_record(services, tenant, card, ids, retain))


async def _given(
    services: Services, tenant: str, model: str | None, record_id: str, retain: Retain | None, **inputs: Any
) -> Side:
    """A stored record as one side of a pair (with the same checks as a single-record analysis)."""
    meta, stats, _, cached = await record_for(
        services, tenant, model=model, record_id=record_id, retain=retain, **inputs
    )
    return Side(meta, stats, cached)


async def model_pair(
    services: Services,
    tenant: str,
    model: str | None,
    reference_model: str,
    text: str | None,
    messages: list[ChatMessage] | None,
    record_id: str | None = None,
    retain: Retain | None = None,
) -> Pair:
    """The same tokens under two models (a text's, a chat's, or a stored record's); they must share a tokenizer,
    so that positions mean the same."""
    given = None
    if record_id is not None:
        given = await _given(services, tenant, model, record_id, retain, text=text, messages=messages)
        model = given.meta.model
    elif model is None:
        raise ApiError(422, "missing_input", "a paired analysis needs a `model` (or a `record_id`)", "model")
    codecs = []
    for name, param in ((model, "model"), (reference_model, "reference_model")):
        codecs.append(await services.catalog.codec(await services.catalog.card(name, param)))
    codec_p, codec_q = codecs
    if not share_tokenizer(codecs):
        if text is None or given is not None:
            raise ApiError(
                422,
                "tokenizer_mismatch",
                f"{model!r} and {reference_model!r} tokenize differently: they are compared byte by byte, "
                "which takes a `text` (not a chat or a stored record)",
                "reference_model",
            )
        return await byte_pair(services, tenant, codec_p, codec_q, text)
    limit = services.settings.max_positions
    if given is not None:
        ids = given.meta.token_ids
        check_length(codec_q.card, len(ids), limit, "reference_model")
        p, q = given, await _scored(services, tenant, reference_model, ids, retain)
    else:
        ids = await input_ids(codec_p, text, messages, False, limit)
        if await input_ids(codec_q, text, messages, False, limit) != ids:
            raise ApiError(
                422, "tokenizer_mismatch", "the two models' chat templates give different tokens", "messages"
            )
        check_length(codec_q.card, len(ids), limit, "reference_model")
        p, q = await asyncio.gather(
            _scored(services, tenant, model, ids, retain), _scored(services, tenant, reference_model, ids, retain)
        )
    ends = None if messages is None else await asyncio.to_thread(message_ends, codec_p, messages)
    return Pair(p=p, q=q, codec=codec_p, offset=0, shown=p.meta, message_ends=ends)


async def byte_pair(services: Services, tenant: str, codec_p: TextCodec, codec_q: TextCodec, text: str) -> Pair:
    """Two models that tokenize differently, aligned byte by byte: each byte's exact next-byte distribution under
    each model (Phan et al. 2024; app.serving.bytes), position t being byte t of the text."""
    p, q = await asyncio.gather(
        byte_record(services, tenant, codec_p.card, text), byte_record(services, tenant, codec_q.card, text)
    )
    sides = [Side(*record.as_record(), record.cached) for record in (p, q)]
    cross = byte_cross(p.logdist, q.logdist)
    return Pair(p=sides[0], q=sides[1], codec=codec_p, offset=0, shown=sides[0].meta, byte_cross=cross)


async def context_pair(
    services: Services,
    tenant: str,
    model: str | None,
    context: str,
    text: str | None,
    record_id: str | None = None,
    retain: Retain | None = None,
    field: str = "context",
) -> Pair:
    """The text's (or a stored record's) tokens under one model, after the context (p) and on their own (q).
    `field`: the request field that holds the context (membership's `prefix` and `member_prefix` are contexts)."""
    if not context:
        raise ApiError(422, "empty_text", f"the {field} is empty", field)
    limit = services.settings.max_positions
    if record_id is not None:
        q = await _given(services, tenant, model, record_id, retain, text=text, messages=None)
        codec = await services.catalog.codec(await services.catalog.card(q.meta.model))
        alone = q.meta.token_ids
    elif text is None:
        raise ApiError(422, "missing_input", f"a `{field}` needs a `text` or a `record_id`", "text")
    elif model is None:
        raise ApiError(422, "missing_input", "a paired analysis needs a `model` (or a `record_id`)", "model")
    else:
        codec = await services.catalog.codec(await services.catalog.card(model))
        alone = await input_ids(codec, text, None, False, limit)
    bos = 1 if codec.card.add_bos and alone[:1] == [codec.card.bos_token_id] else 0
    context_ids = await asyncio.to_thread(text_token_ids, codec, context, limit, True, field)
    with_context = context_ids + alone[bos:]
    check_length(codec.card, len(with_context), limit, field)
    name = codec.card.name
    if record_id is not None:
        p = await _scored(services, tenant, name, with_context, retain)
    else:
        p, q = await asyncio.gather(
            _scored(services, tenant, name, with_context, retain), _scored(services, tenant, name, alone, retain)
        )
    return Pair(p=p, q=q, codec=codec, offset=len(context_ids) - bos, shown=q.meta)
