"""The Compare panel in headless Chromium against the live service: SmolLM2 against a tiny Llama with the same
tokenizer, and SmolLM2 with and without a context. The values the tokens are coloured by are
/v1/analysis/compare's, and the hover shows both distributions' alternatives. Screenshots in artifacts/."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import Page

from tests.conftest import MODEL
from tests.e2e.conftest import REFERENCE, SLOW_MS, screenshot

TEXT = "The river froze early that year, and the ferry stopped running before the first snow."
CONTEXT = "In the north of the country winters come early: by November the rivers are frozen."


def compare(page: Page, mode: str, metric: str) -> None:
    page.click("#tabs [data-tab=compare]")
    page.select_option("#cmp-mode", mode)
    if mode == "models":
        page.select_option("#cmp-reference", REFERENCE)
    else:
        page.fill("#cmp-context", CONTEXT)
    page.fill("#cmp-text", TEXT)
    page.select_option("#cmp-metric", metric)
    page.click("#cmp-run")
    page.wait_for_selector("#cmp-summary-table", timeout=SLOW_MS)


def shown_values(page: Page, side: str) -> dict[int, float]:
    """The value each token of a side is coloured by, by its position in the text (q's positions)."""
    cells: list[Any] = page.locator(f"#cmp-{side} .tok").evaluate_all(
        "els => els.filter(e => e.dataset.value !== undefined)"
        ".map(e => [Number(e.dataset.index), Number(e.dataset.value)])"
    )
    offset = page.locator("#cmp-p .tok").count() - page.locator("#cmp-q .tok").count() if side == "p" else 0
    return {index - offset: value for index, value in cells}


def test_two_models_side_by_side_with_the_apis_kl(page: Page, alpha: httpx.Client) -> None:
    compare(page, "models", "kl")
    body = {"model": MODEL, "reference_model": REFERENCE, "text": TEXT, "methods": ["kl", "shift_rank"]}
    answer = alpha.post("/v1/analysis/compare", json=body).json()
    expected = {t["position"]: t["values"]["kl"] for t in answer["tokens"]}
    assert shown_values(page, "q") == expected  # exactly the API's numbers, at the same positions
    assert shown_values(page, "p") == expected
    assert len(expected) == page.locator("#cmp-q .tok").count() - 1
    assert page.locator("#cmp-plot").get_attribute("data-points") == str(len(expected))
    assert page.locator("#cmp-p-title").inner_text() == f"p: {MODEL}"
    assert page.locator("#cmp-q-title").inner_text() == f"q: {REFERENCE}"

    page.locator("#cmp-q .tok").nth(5).hover()
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert f"p {MODEL}" in text and f"q {REFERENCE}" in text and "kl " in text and "shift_rank " in text
    assert page.locator("#tooltip .pair table").count() == 2  # both distributions' top alternatives
    screenshot(page, "page-compare")

    page.select_option("#cmp-metric", "shift_rank")
    ranks = {t["position"]: t["values"]["shift_rank"] for t in answer["tokens"]}
    assert shown_values(page, "q") == ranks


def test_one_model_with_and_without_a_context(page: Page, alpha: httpx.Client) -> None:
    compare(page, "context", "confidence_gain")
    body = {"model": MODEL, "context": CONTEXT, "text": TEXT, "methods": ["kl", "confidence_gain"]}
    answer = alpha.post("/v1/analysis/compare", json=body).json()
    expected = {t["position"]: t["values"]["confidence_gain"] for t in answer["tokens"]}
    assert shown_values(page, "q") == expected
    assert shown_values(page, "p") == expected  # p's tokens after the context line up with q's
    context_tokens = page.locator("#cmp-p .tok.ctx").count()
    assert context_tokens > 5  # the context, shown on p's side only, uncoloured
    assert "with the context" in page.locator("#cmp-p-title").inner_text()
    screenshot(page, "page-compare-context")
