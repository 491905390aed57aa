"""A text far too long for the model's context is refused by its length in characters, before it is tokenized,
with the code that counting its tokens gives (#30 item 4: an 8.3 MB text took 7.9 s to refuse, on the event loop)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import MODEL

HUGE = "word " * 1_600_000  # 8 MB: within the body limit, some 1.6 M tokens


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/score", {"model": MODEL, "text": HUGE}),
        ("/v1/score", {"model": MODEL, "messages": [{"role": "user", "content": HUGE}]}),
        ("/v1/generate", {"model": MODEL, "prompt": HUGE, "max_tokens": 1}),
        ("/v1/analysis/uncertainty", {"model": MODEL, "text": HUGE}),
        ("/v1/completions", {"model": MODEL, "prompt": HUGE, "max_tokens": 1}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": HUGE}]}),
        ("/v1/decode/contrastive", {"prompt": HUGE, "views": [{"model": MODEL}], "max_tokens": 1}),
    ],
    ids=["score", "score-chat", "generate", "analysis", "completions", "chat", "decode"],
)
def test_a_text_far_too_long_is_refused_by_its_characters(alpha: httpx.Client, path: str, body: dict[str, Any]) -> None:
    response = alpha.post(path, json=body)
    assert response.status_code == 422, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"  # the code a count of its tokens gives
    assert "characters exceed the limit of 8192 tokens" in error["message"]  # refused before tokenizing
    assert alpha.get("/healthz").status_code == 200


def test_tokenize_counts_a_long_document_as_before(alpha: httpx.Client) -> None:
    """/tokenize refuses nothing by length (clients count whole documents with it): tokenized, off the loop."""
    text = "word " * 20_000  # "word", " word" x 19,999, " "
    answer = alpha.post("/tokenize", json={"model": MODEL, "prompt": text, "add_special_tokens": False})
    assert answer.status_code == 200 and answer.json()["count"] == 20_001
