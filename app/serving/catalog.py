"""The models the gateway knows: configured names plus the cards that workers publish in Redis."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from app.platform.errors import ApiError
from app.serving.text import TextCodec
from workers.config import ModelSpec
from workers.contract.cards import ModelCard
from workers.contract.heartbeats import live_ids
from workers.contract.keys import alive_key, card_key, tokenizer_key
from workers.contract.names import as_bytes

CARD_TTL_S = 2.0


class ModelCatalog:
    def __init__(self, redis: Redis, configured: list[ModelSpec]) -> None:
        self.redis = redis
        self.configured = {m.name: m for m in configured}
        self._cards: dict[str, tuple[float, ModelCard]] = {}
        self._codecs: dict[str, TextCodec] = {}

    async def published_card(self, name: str) -> ModelCard | None:
        now = time.monotonic()
        cached = self._cards.get(name)
        if cached and now - cached[0] < CARD_TTL_S:
            return cached[1]
        raw = await self.redis.get(card_key(name))
        if raw is None:
            return None
        card = ModelCard.model_validate_json(raw)
        self._cards[name] = (now, card)
        return card

    async def card(self, name: str, param: str = "model") -> ModelCard:
        """The model's card, 404 for a model nobody serves, 503 while its worker is still starting; `param` is the
        request field that named it (`reference_model`, `views.1.model`…)."""
        card = await self.published_card(name)
        if card is not None:
            return card
        if name not in self.configured:
            raise ApiError(404, "model_not_found", f"model {name!r} does not exist", param)
        raise ApiError(
            503,
            "model_unavailable",
            f"model {name!r} is not loaded yet; retry shortly",
            param,
            headers={"Retry-After": "5"},
        )

    async def codec(self, card: ModelCard) -> TextCodec:
        codec = self._codecs.get(card.fingerprint)
        if codec is None or codec.card != card:
            raw = as_bytes(await self.redis.get(tokenizer_key(card.fingerprint)))
            if raw is None:
                raise ApiError(
                    503,
                    "model_unavailable",
                    f"the tokenizer of {card.name!r} is not published yet",
                    "model",
                    headers={"Retry-After": "5"},
                )
            codec = await asyncio.to_thread(TextCodec, card, raw.decode())  # seconds for a large vocabulary
            self._codecs[card.fingerprint] = codec
        return codec

    async def live_workers(self, name: str) -> int:
        return len(await live_ids(self.redis, alive_key(name), time.time()))

    async def names(self) -> list[str]:
        prefix = card_key("")
        published = [k.decode().removeprefix(prefix) async for k in self.redis.scan_iter(match=card_key("*"))]
        return sorted(set(self.configured) | set(published))
