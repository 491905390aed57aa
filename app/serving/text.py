"""Tokenization in the gateway, from the tokenizer a worker published: ids, chats, token texts."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from tokenizers import Tokenizer

from app.serving.chat_template import render_chat
from app.serving.text_bound import chars_per_token
from workers.contract.cards import ModelCard

CONTEXT_TOKENS = 4  # tokens decoded before the new ones, so decoders see the context they depend on
TEXTS_CACHED = 256  # token-text lists kept per tokenizer


class TextTooLong(ValueError):
    """A text with more characters than `max_tokens` tokens of this tokenizer can cover: refused untokenized."""

    def __init__(self, chars: int, max_chars: int) -> None:
        super().__init__(f"{chars} characters, more than the {max_chars} that fit")
        self.chars, self.max_chars = chars, max_chars


class TextCodec:
    """Turns texts and chats into the token ids the model's worker would use, and ids back into text.

    Tokenizing goes through the tokenizer's batch call, which lets go of the GIL while it works, so a caller that
    runs it in a thread leaves the event loop free. Given `max_tokens`, a text longer than that many tokens could
    cover (`chars_per_token`, app/serving/text_bound.py) is refused with TextTooLong before it is tokenized.
    """

    def __init__(self, card: ModelCard, tokenizer_json: str) -> None:
        self.card = card
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer_id = hashlib.sha256(tokenizer_json.encode()).hexdigest()[:16]
        self.chars_per_token = chars_per_token(tokenizer_json)  # None: no safe bound for this tokenizer
        self._pieces: list[str] | None = None
        # analyses of a cached record ask for the same token texts again and again
        self._texts = lru_cache(maxsize=TEXTS_CACHED)(self._token_texts)

    def check_fits(self, text: str, max_tokens: int | None) -> None:
        """TextTooLong if `text` has more characters than `max_tokens` tokens can cover (so more tokens)."""
        if max_tokens is not None and self.chars_per_token is not None:
            max_chars = max_tokens * self.chars_per_token
            if len(text) > max_chars:
                raise TextTooLong(len(text), max_chars)

    def token_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        """The tokenizer's own ids for a text (its batch call: the GIL is free meanwhile)."""
        return list(self.tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids)

    def encode(self, text: str, add_special_tokens: bool = True, max_tokens: int | None = None) -> list[int]:
        self.check_fits(text, max_tokens)
        ids = self.token_ids(text, add_special_tokens)
        bos = self.card.bos_token_id
        if add_special_tokens and self.card.add_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        if not self.card.chat_template:
            raise LookupError(f"model {self.card.name!r} has no chat template")
        return render_chat(
            self.card.chat_template,
            messages,
            self.card.special_tokens,
            add_generation_prompt,
            continue_final_message,
            template_kwargs,
        )

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
        add_special_tokens: bool = False,
        *,
        max_tokens: int | None = None,
    ) -> list[int]:
        """As transformers' apply_chat_template: the template adds any special tokens itself (vLLM's
        `add_special_tokens` adds the tokenizer's on top). `max_tokens` bounds the rendered chat."""
        rendered = self.render_chat(messages, add_generation_prompt, continue_final_message, template_kwargs)
        self.check_fits(rendered, max_tokens)
        if add_special_tokens:
            return self.encode(rendered)
        return self.token_ids(rendered, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def pieces(self) -> list[str]:
        """The text of every token id as it reads after other text, built once (for alternatives).

        Each id is decoded after an anchor token, so decoders that strip a leading space at the start
        of a text (SentencePiece's) keep it; a token holding part of a UTF-8 character shows U+FFFD.
        """
        if self._pieces is None:
            anchor = self.tokenizer.encode("a", add_special_tokens=False).ids[:1]
            lead = len(self.tokenizer.decode(anchor, skip_special_tokens=False))
            texts = self.tokenizer.decode_batch(
                [[*anchor, i] for i in range(self.card.vocab_size)], skip_special_tokens=False
            )
            self._pieces = [t[lead:] for t in texts]
        return self._pieces

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids of the tokenizer's special tokens (`<|im_end|>`, `<bos>`, ...): control tokens, not text."""
        return frozenset(i for i, added in self.tokenizer.get_added_tokens_decoder().items() if added.special)

    def token_texts(self, ids: list[int]) -> list[str]:
        return list(self._texts(tuple(ids)))

    def _token_texts(self, key: tuple[int, ...]) -> tuple[str, ...]:
        """The text each token adds, so that the texts join to the decoded sequence exactly.

        Incremental detokenization: a token that ends inside a UTF-8 character adds "" and the token that
        completes the character carries it.
        """
        ids = list(key)
        starts = [max(0, t - CONTEXT_TOKENS) for t in range(len(ids))]
        windows = self.tokenizer.decode_batch([ids[s : t + 1] for t, s in enumerate(starts)], skip_special_tokens=False)
        if not any(w.endswith("\ufffd") for w in windows[:-1]):  # every token completes its text: one batched pass
            prefixes = self.tokenizer.decode_batch([ids[s:t] for t, s in enumerate(starts)], skip_special_tokens=False)
            return tuple(w[len(p) :] for w, p in zip(windows, prefixes, strict=True))
        decode = self.tokenizer.decode
        texts: list[str] = []
        emitted = 0  # tokens before this index have had their text emitted
        for t in range(len(ids)):
            start = max(0, emitted - CONTEXT_TOKENS)
            window = decode(ids[start : t + 1], skip_special_tokens=False)
            if window.endswith("\ufffd") and t + 1 < len(ids):
                texts.append("")
                continue
            prefix = decode(ids[start:emitted], skip_special_tokens=False) if emitted > start else ""
            texts.append(window[len(prefix) :])
            emitted = t + 1
        return tuple(texts)


def share_tokenizer(codecs: Iterable[TextCodec]) -> bool:
    """Whether these models tokenize alike (one tokenizer, one vocabulary size): their token ids line up."""
    return len({(c.tokenizer_id, c.card.vocab_size) for c in codecs}) == 1
