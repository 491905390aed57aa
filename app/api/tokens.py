"""Per-token fields shared by scoring, generation and records, and the input rules they share."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.chat_template import ChatTemplateError
from app.errors import ApiError
from app.text import TextCodec
from workers.protocol import ModelCard, RecordMeta


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(min_length=1, max_length=64)
    content: str


class TopLogprob(BaseModel):
    id: int
    text: str
    logprob: float


class TokenOut(BaseModel):
    id: int
    text: str
    logprob: float | None = Field(description="log p(token | prefix); null for the first token")
    rank: int | None = Field(description="1 + number of tokens the model found more likely")
    entropy: float | None = Field(description="entropy (nats) of the distribution that predicted this token")
    top_logprobs: list[TopLogprob] | None


def input_ids(
    codec: TextCodec,
    text: str | None,
    messages: list[ChatMessage] | None,
    add_generation_prompt: bool,
    max_positions: int,
) -> list[int]:
    """Token ids for a text or a chat, with the errors users can act on."""
    if (text is None) == (messages is None):
        raise ApiError(422, "missing_input", "give exactly one of `text` (or `prompt`) and `messages`")
    if text is not None:
        if not text:
            raise ApiError(422, "empty_text", "the text is empty", "text")
        ids = codec.encode(text)
    else:
        try:
            ids = codec.encode_chat([m.model_dump() for m in messages or []], add_generation_prompt)
        except LookupError as exc:
            raise ApiError(422, "no_chat_template", str(exc), "messages") from exc
        except ChatTemplateError as exc:
            raise ApiError(
                422, "chat_template_error", f"the chat template refused the messages: {exc}", "messages"
            ) from exc
    check_length(codec.card, len(ids), max_positions)
    if not ids:
        raise ApiError(422, "empty_text", "the input has no tokens")
    return ids


def check_length(card: ModelCard, n: int, max_positions: int) -> None:
    limit = min(card.context_length, max_positions)
    if n > limit:
        raise ApiError(422, "context_length_exceeded", f"{n} tokens exceed the limit of {limit} for {card.name!r}")


def token_rows(
    meta: RecordMeta, stats: dict[str, np.ndarray], codec: TextCodec, top_k: int, start: int = 0
) -> list[dict[str, Any]]:
    """Per-token fields for tokens start..T-1; row t-1 of the statistics predicted token t."""
    pieces = codec.pieces()
    ids = meta.token_ids
    texts = codec.token_texts(ids)
    logprob, rank, entropy = stats["logprob"].tolist(), stats["rank"].tolist(), stats["entropy"].tolist()
    top_ids = stats["topk_ids"][:, :top_k].tolist()
    top_lp = stats["topk_logprobs"][:, :top_k].tolist()
    rows: list[dict[str, Any]] = []
    for t in range(start, len(ids)):
        if t == 0:
            rows.append(
                {"id": ids[0], "text": texts[0], "logprob": None, "rank": None, "entropy": None, "top_logprobs": None}
            )
            continue
        r = t - 1
        rows.append(
            {
                "id": ids[t],
                "text": texts[t],
                "logprob": logprob[r],
                "rank": rank[r],
                "entropy": entropy[r],
                "top_logprobs": [
                    {"id": i, "text": pieces[i], "logprob": v} for i, v in zip(top_ids[r], top_lp[r], strict=True)
                ],
            }
        )
    return rows
