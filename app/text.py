"""Tokenization in the gateway, from the tokenizer a worker published: ids, chats, token texts."""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer

from app.chat_template import render_chat
from workers.protocol import ModelCard


class TextCodec:
    """Turns texts and chats into the token ids the model's worker would use, and ids back into text."""

    def __init__(self, card: ModelCard, tokenizer_json: str) -> None:
        self.card = card
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self._pieces: list[str] | None = None

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=True).ids
        bos = self.card.bos_token_id
        if self.card.add_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        if not self.card.chat_template:
            raise LookupError(f"model {self.card.name!r} has no chat template")
        return render_chat(self.card.chat_template, messages, self.card.special_tokens, add_generation_prompt)

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
        """As transformers' apply_chat_template: the template adds any special tokens itself."""
        rendered = self.render_chat(messages, add_generation_prompt)
        return list(self.tokenizer.encode(rendered, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def pieces(self) -> list[str]:
        """The text of every token id on its own (special tokens included), built once."""
        if self._pieces is None:
            self._pieces = self.tokenizer.decode_batch([[i] for i in range(self.card.vocab_size)],
                                                       skip_special_tokens=False)
        return self._pieces
