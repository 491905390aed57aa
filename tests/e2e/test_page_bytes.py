"""The Bytes panel in headless Chromium against the live service: a text's byte-level log-probabilities under one
model, and under two compared byte by byte, each chip holding /v1/bytes's value for its byte."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import Page

from tests.conftest import MODEL
from tests.e2e.conftest import REFERENCE, SLOW_MS, screenshot

TEXT = "Café crème at noon."


def chips(page: Page, side: str) -> list[Any]:
    return page.locator(f"#bytes-{side} .tok").evaluate_all(
        "els => els.map(e => [Number(e.dataset.index), "
        "e.dataset.value === 'null' ? null : Number(e.dataset.value), e.textContent])"
    )


def test_bytes_of_two_models_are_the_apis(page: Page, alpha: httpx.Client) -> None:
    page.click("#tabs [data-tab=bytes]")
    page.fill("#bytes-text", TEXT)
    page.select_option("#bytes-reference", REFERENCE)
    page.click("#bytes-run")
    page.wait_for_selector("#bytes-summary-table", timeout=SLOW_MS)
    for side, model in (("p", MODEL), ("q", REFERENCE)):
        answer = alpha.post("/v1/bytes", json={"model": model, "text": TEXT}).json()
        shown = chips(page, side)
        assert len(shown) == answer["n_bytes"] == len(TEXT.encode()) > len(TEXT)  # é is two bytes
        assert [(i, v) for i, v, _ in shown] == [(b["offset"], b["logprob"]) for b in answer["bytes"]]
        assert "".join(t for _, _, t in shown).replace("·", "") == TEXT  # a character's first byte shows it
        assert page.locator(f"#bytes-{side}-title").inner_text() == model
        row = page.locator("#bytes-summary-table tbody tr").nth(0 if side == "p" else 1).locator("td").all_inner_texts()
        assert row[0] == model and float(row[1]) == float(f"{answer['logprob']:.4g}") and row[4] == answer["record_id"]
    backgrounds = page.locator("#bytes-p .tok").evaluate_all("els => els.map(e => e.style.background)")
    assert all(b.startswith("rgb") for b in backgrounds) and len(set(backgrounds)) > 3

    page.locator("#bytes-p .tok").nth(3).hover()  # the first byte of "é"
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert (
        "byte 3: 0xc3" in text and 'begins "é"' in text and MODEL in text and REFERENCE in text and "difference" in text
    )
    screenshot(page, "page-bytes")


def test_one_model_alone_hides_the_second_side(page: Page) -> None:
    page.click("#tabs [data-tab=bytes]")
    page.fill("#bytes-text", "ab")
    page.click("#bytes-run")
    page.wait_for_selector("#bytes-summary-table", timeout=SLOW_MS)
    assert page.locator("#bytes-q-side").is_hidden()
    assert page.locator("#bytes-summary-table tbody tr").count() == 1
    assert len(chips(page, "p")) == 2
