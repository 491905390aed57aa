"""The heatmap page in headless Chromium against the live service: submit a text, see coloured tokens and a
tooltip of alternatives; the screenshot is kept in artifacts/."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import ARTIFACTS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TEXT = "The committee met on Tuesday. Everyone agreed that the bridge needed repairs before winter."
GLTR_COLOURS = {"rgb(163, 228, 160)", "rgb(249, 231, 159)", "rgb(245, 183, 177)", "rgb(210, 180, 222)"}


def test_page_colours_tokens_and_shows_alternatives(service: str) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{service}/")
            page.fill("#apikey", "key-alpha")
            page.dispatch_event("#apikey", "change")
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            page.fill("#text", TEXT)
            page.click("#score")
            page.wait_for_selector("#summary-table", timeout=120_000)

            tokens = page.locator("#tokens .tok")
            n = tokens.count()
            assert n > 10
            assert "".join(tokens.all_text_contents()) == TEXT
            backgrounds = [tokens.nth(i).evaluate("e => e.style.background") for i in range(n)]
            assert backgrounds[0] == "" and all(b.startswith("rgb") for b in backgrounds[1:])  # first has no prediction
            assert len(set(backgrounds[1:])) > 3  # a gradient, not one colour

            tokens.nth(5).hover()
            tooltip = page.locator("#tooltip")
            tooltip.wait_for(state="visible")
            assert "top alternatives" in tooltip.inner_text() and "rank" in tooltip.inner_text()
            assert page.locator("#tooltip tr").count() == 10
            assert "perplexity" in page.locator("#summary").inner_text()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "heatmap.png"), full_page=True)

            page.select_option("#metric", "gltr")
            gltr = {tokens.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(1, n)}
            assert gltr <= GLTR_COLOURS
        finally:
            browser.close()


@pytest.mark.parametrize("path", ["/", "/docs", "/openapi.json"])
def test_page_and_docs_are_served(service: str, path: str) -> None:
    import httpx

    assert httpx.get(f"{service}{path}").status_code == 200
