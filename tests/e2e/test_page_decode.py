"""The Decode panel in headless Chromium against the live service: context-aware decoding streamed step by
step; the steps the page shows are the non-streamed answer's. The screenshot is kept in artifacts/."""

from __future__ import annotations

import json

import httpx
from playwright.sync_api import Page

from tests.conftest import MODEL
from tests.e2e.conftest import SLOW_MS, screenshot

PROMPT = "Who keeps the lighthouse on the island?"
CONTEXT = "The lighthouse on the island was automated in 1987; no keeper has lived there since."


def test_streamed_steps_equal_the_answer(page: Page, alpha: httpx.Client) -> None:
    page.click("#tabs [data-tab=decode]")
    page.select_option("#dec-preset", "cad")
    page.select_option("#dec-model", MODEL)
    page.fill("#dec-context", CONTEXT)
    page.fill("#dec-prompt", PROMPT)
    page.fill("#dec-max", "10")
    page.fill("#dec-temp", "0")
    page.click("#dec-run")
    page.wait_for_selector("#dec-steps[data-record]", timeout=SLOW_MS)

    body = {
        "prompt": PROMPT,
        "max_tokens": 10,
        "temperature": 0,
        "seed": 0,
        "preset": {"name": "cad", "model": MODEL, "context": CONTEXT},
    }
    answer = alpha.post("/v1/decode/contrastive", json=body).json()
    rows = page.locator("#dec-steps tbody tr")
    assert rows.count() == len(answer["steps"]) == answer["usage"]["completion_tokens"]
    shown = [
        (int(rows.nth(i).get_attribute("data-id") or -1), json.loads(rows.nth(i).get_attribute("data-views") or ""))
        for i in range(rows.count())
    ]
    assert shown == [(s["id"], s["views"]) for s in answer["steps"]]
    chips = page.locator("#dec-text .tok").evaluate_all("els => els.map(e => e.textContent)")
    assert "".join(chips).replace("⏎", "\n") == "".join(s["text"] for s in answer["steps"])
    header = page.locator("#dec-steps thead").inner_text()
    assert "with the context" in header and "without the context" in header  # what each view is
    assert "view 0" not in header and "view 1" not in header
    assert "with the context: log p" in page.locator("#dec-text .tok").first.get_attribute("title") or ""
    screenshot(page, "page-decode")


def test_a_refused_request_clears_the_old_steps(page: Page) -> None:
    page.click("#tabs [data-tab=decode]")
    page.fill("#dec-max", "3")
    page.click("#dec-run")
    page.wait_for_selector("#dec-steps[data-record]", timeout=SLOW_MS)
    assert page.locator("#dec-steps tbody tr").count() == 3
    page.select_option("#dec-preset", "views")
    page.fill("#dec-views", json.dumps([{"model": MODEL, "weight": 0}]))  # a view that counts for nothing
    page.click("#dec-run")
    page.wait_for_selector("#dec-status.error")
    assert "weight" in page.locator("#dec-status").inner_text()
    assert page.locator("#dec-steps tbody tr").count() == 0


def test_dola_shows_the_premature_layer_of_each_step(page: Page, alpha: httpx.Client) -> None:
    """DoLa in the Decode panel (#32): the page's steps, and the premature layer each contrasted, are the API's."""
    page.click("#tabs [data-tab=decode]")
    page.select_option("#dec-preset", "dola")
    page.select_option("#dec-model", MODEL)
    page.select_option("#dec-layers", "low")
    page.fill("#dec-layer-list", "")
    page.fill("#dec-prompt", PROMPT)
    page.fill("#dec-max", "6")
    page.fill("#dec-temp", "0")
    page.click("#dec-run")
    page.wait_for_selector("#dec-steps[data-record]", timeout=SLOW_MS)

    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "seed": 0, "preset": {"name": "dola", "model": MODEL}}
    answer = alpha.post("/v1/decode/contrastive", json={**body, "preset": {**body["preset"], "layers": "low"}}).json()
    rows = page.locator("#dec-steps tbody tr")
    assert rows.count() == len(answer["steps"]) > 0
    shown = [
        (int(rows.nth(i).get_attribute("data-id") or -1), int(rows.nth(i).get_attribute("data-premature") or -1))
        for i in range(rows.count())
    ]
    assert shown == [(s["id"], s["premature_layer"]) for s in answer["steps"]]
    assert all(isinstance(s["premature_layer"], int) for s in answer["steps"])
    assert "premature layer" in page.locator("#dec-steps thead").inner_text()

    page.fill("#dec-layer-list", "2, 4")  # indices override the bucket
    page.click("#dec-run")
    page.wait_for_selector("#dec-steps[data-record]", timeout=SLOW_MS)
    listed = alpha.post("/v1/decode/contrastive", json={**body, "preset": {**body["preset"], "layers": [2, 4]}}).json()
    premature = page.locator("#dec-steps tbody tr").evaluate_all("rows => rows.map(r => Number(r.dataset.premature))")
    assert premature == [s["premature_layer"] for s in listed["steps"]] and set(premature) <= {2, 4}
