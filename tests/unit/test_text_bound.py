"""Texts too long for the context are refused by their length before they are tokenized, with a bound that never
refuses a text that fits; and tokenizing runs off the event loop (#30 item 4)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from app.platform.errors import ApiError
from app.serving.inputs import input_ids, token_ids
from app.serving.text import TextCodec
from app.serving.text_bound import chars_per_token
from logprobe.schemas.tokens import ChatMessage
from tests.conftest import DATA_DIR, MODEL
from workers.contract.cards import ModelCard

LIMIT = 64  # tokens


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    from workers.config import PACKAGED_MODELS
    from workers.models import safetensors_dir

    folder, _ = safetensors_dir(PACKAGED_MODELS[MODEL], DATA_DIR)
    return (folder / "tokenizer.json").read_text()


@pytest.fixture(scope="module")
def codec(tokenizer_json: str) -> TextCodec:
    card = ModelCard(
        name=MODEL,
        fingerprint="x",
        backend="hf",
        dtype="float32",
        vocab_size=49152,
        hidden_size=576,
        context_length=8192,
        add_bos=False,
        bos_token_id=1,
        eos_token_ids=[2],
        chat_template="{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
        special_tokens={},
        storage="hidden",
        hidden_dtype="float32",
        rebuild_max_abs_error=0.0,
        max_new_tokens=16,
    )
    return TextCodec(card, tokenizer_json)


HARD_TEXTS = [  # the fewest tokens per character a byte-level BPE can give: long merged runs, special tokens
    "#" * 5000,
    "-" * 5000,
    "\n" + " " * 5000,
    "\t" * 5000,
    "=" * 4999 + "\n",
    "<|im_start|>" * 500,
    "<|endoftext|>" * 500,
    "the " * 2000,
    "東京" * 2000,
    "🦊" * 2000,
    "".join(chr(c) for c in range(32, 5000)),
]


def test_smollm2s_bound_is_its_longest_token_in_bytes(tokenizer_json: str) -> None:
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    assert chars_per_token(tokenizer_json) == max(len(piece) for piece in vocab) == 81


@pytest.mark.parametrize("text", HARD_TEXTS, ids=range(len(HARD_TEXTS)))
def test_no_text_has_fewer_tokens_than_its_characters_over_the_bound(codec: TextCodec, text: str) -> None:
    bound = codec.chars_per_token
    assert bound is not None
    assert len(codec.encode(text, add_special_tokens=False)) * bound >= len(text)


def test_a_text_longer_than_the_limit_could_cover_is_refused_untokenized(codec: TextCodec) -> None:
    bound = codec.chars_per_token
    assert bound is not None
    seen: list[str] = []
    real = codec.token_ids
    codec.token_ids = lambda text, add_special_tokens: seen.append(text) or real(text, add_special_tokens)  # type: ignore[method-assign]
    try:
        with pytest.raises(ApiError) as refused:
            token_ids(codec, "#" * (LIMIT * bound + 1), None, False, LIMIT)
        assert refused.value.code == "context_length_exceeded"
        assert f"exceed the limit of {LIMIT} tokens" in refused.value.message
        chat = [ChatMessage(role="user", content="#" * (LIMIT * bound))]  # fits alone; not with the template
        with pytest.raises(ApiError) as chat_refused:
            token_ids(codec, None, chat, False, LIMIT)
        assert chat_refused.value.code == "context_length_exceeded"
        assert seen == []  # neither was tokenized
        with pytest.raises(ApiError) as counted:  # within the bound: tokenized, and refused by its tokens
            token_ids(codec, "the " * (LIMIT + 1), None, False, LIMIT)
        assert counted.value.code == "context_length_exceeded" and "tokens exceed" in counted.value.message
        assert len(seen) == 1
    finally:
        del codec.token_ids


@pytest.mark.parametrize(
    "change",
    [
        {"normalizer": {"type": "NFC"}},
        {"normalizer": {"type": "Strip", "strip_left": True, "strip_right": True}},
        {"normalizer": {"type": "Replace", "pattern": {"String": "  "}, "content": " "}},
        {"normalizer": {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}},
        {"pre_tokenizer": {"type": "Whitespace"}},
        {"pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": False}},
        {"truncation": {"max_length": 16, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}},
    ],
)
def test_no_bound_where_a_part_of_the_tokenizer_may_drop_text(tokenizer_json: str, change: dict[str, Any]) -> None:
    spec = json.loads(tokenizer_json) | change
    assert chars_per_token(json.dumps(spec)) is None


def test_no_bound_for_a_fused_unknown_token_without_byte_fallback(tokenizer_json: str) -> None:
    spec = json.loads(tokenizer_json)
    spec["model"] |= {"unk_token": "<unk>", "fuse_unk": True, "byte_fallback": False}
    assert chars_per_token(json.dumps(spec)) is None
    spec["model"]["byte_fallback"] = True
    assert chars_per_token(json.dumps(spec)) == 81


async def test_the_event_loop_serves_on_while_a_text_is_tokenized(codec: TextCodec) -> None:
    """Tokenizing is held until another coroutine has run to its end: it can only if tokenizing left the loop."""
    started, release = threading.Event(), threading.Event()
    real = codec.token_ids

    def held(text: str, add_special_tokens: bool) -> list[int]:
        started.set()
        release.wait(60)  # a bound for a broken build, not a timing
        return real(text, add_special_tokens)

    codec.token_ids = held  # type: ignore[method-assign]
    order: list[str] = []
    try:
        tokenizing = asyncio.create_task(input_ids(codec, "A text.", None, False, LIMIT))

        async def other_request() -> None:
            await asyncio.to_thread(started.wait, 60)
            order.append("other request served")

        await other_request()
        order.append("tokenized" if tokenizing.done() else "still tokenizing")
        release.set()
        assert await tokenizing == real("A text.", True)
    finally:
        release.set()
        del codec.token_ids
    assert order == ["other request served", "still tokenizing"]
