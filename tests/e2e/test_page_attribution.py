"""Attribution on the Analyse panel in headless Chromium against the live service: a click on a scored token
colours the tokens before it by /v1/analysis/attribution's importances (exactly the API's numbers, kept in the
tokens' data-value), marks the target, shows a legend, a status line and the importance on hover; clearing it
(the button, the target again, Escape) restores the previous colours; an error says so and colours nothing.
Screenshot in artifacts/page-attribution.png."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import Page

from tests.e2e.conftest import SLOW_MS, screenshot
from tests.e2e.test_page import record_id, score

TARGET = 12
REAGENT_PASSES = 132  # four rounds of ReAGent's 16 probes: enough to check the page, quick on a shared CPU


def backgrounds(page: Page) -> list[str]:
    return page.locator("#tokens .tok").evaluate_all("els => els.map(e => e.style.background)")  # type: ignore[no-any-return]


def shown_importances(page: Page) -> dict[int, float]:
    cells: list[Any] = page.locator("#tokens .tok").evaluate_all(
        "els => els.filter(e => e.dataset.value !== undefined)"
        ".map(e => [Number(e.dataset.index), Number(e.dataset.value)])"
    )
    return {index: value for index, value in cells}


def click_and_ask(page: Page, position: int) -> dict[str, Any]:
    """Click token `position`, wait for its attribution's colouring, and return the request the page sent."""
    with page.expect_request("**/v1/analysis/attribution") as request:
        page.locator("#tokens .tok").nth(position).click()
    page.wait_for_selector(f"#tokens .tok.target[data-index='{position}']", timeout=SLOW_MS)
    return request.value.post_data_json  # type: ignore[no-any-return]


def rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(c) for c in colour.removeprefix("rgb(").removesuffix(")").split(","))


def test_occlusion_colours_the_context_with_the_apis_importances(page: Page, alpha: httpx.Client) -> None:
    score(page)
    before = backgrounds(page)
    body = click_and_ask(page, TARGET)
    asked = {"record_id": record_id(page), "positions": [TARGET], "method": "occlusion", "seed": 0, "max_passes": 512}
    assert body == asked
    answer = alpha.post("/v1/analysis/attribution", json=body).json()
    assert answer["cached"]  # the page's request computed it
    importance = answer["targets"][0]["importance"]
    assert len(importance) == TARGET
    assert shown_importances(page) == dict(enumerate(importance))  # exactly the API's numbers, token by token

    # a diverging scale: the strongest raiser is red, a lowerer blue; tokens after the target are dimmed
    colours = backgrounds(page)
    strongest = max(range(TARGET), key=lambda i: importance[i])
    red, _, blue = rgb(colours[strongest])
    assert red > blue
    lowest = min(range(TARGET), key=lambda i: importance[i])
    if importance[lowest] < -0.01 * max(abs(v) for v in importance):
        red, _, blue = rgb(colours[lowest])
        assert blue > red
    assert page.locator("#tokens .tok.after").count() == len(before) - TARGET - 1
    assert "occlusion" in page.locator("#legend").inner_text()
    status = page.locator("#attr-status").inner_text()
    assert f"token {TARGET}" in status and f"{answer['passes']} forward passes" in status
    assert answer["passes"] == TARGET + 1

    page.locator("#tokens .tok").nth(strongest).hover()  # the hover adds the importance, keeps the alternatives
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    assert "importance for" in tip.inner_text() and "raises p" in tip.inner_text()
    assert "top alternatives" in tip.inner_text()
    screenshot(page, "page-attribution")

    page.click("#attr-clear")  # clearing restores the previous colouring
    assert backgrounds(page) == before and shown_importances(page) == {}
    assert page.locator("#tokens .tok.target").count() == 0 and page.locator("#attr").is_hidden()

    click_and_ask(page, TARGET)  # clicking the target again clears it too, and so does Escape
    page.locator("#tokens .tok").nth(TARGET).click()
    assert backgrounds(page) == before and page.locator("#tokens .tok.target").count() == 0
    click_and_ask(page, TARGET - 1)
    assert len(shown_importances(page)) == TARGET - 1
    page.keyboard.press("Escape")
    assert backgrounds(page) == before and shown_importances(page) == {}
    assert not page.script_errors  # type: ignore[attr-defined]


def test_reagent_shares_and_errors_that_clear_the_colouring(page: Page, alpha: httpx.Client) -> None:
    score(page)
    before = backgrounds(page)
    page.select_option("#attr-method", "reagent")

    page.fill("#attr-passes", "1")  # too few passes for one round of probes: the service's error, shown
    page.locator("#tokens .tok").nth(TARGET).click()
    page.wait_for_selector("#attr-status.error", timeout=SLOW_MS)
    assert "max_passes_too_small" in page.locator("#attr-status").inner_text()
    assert backgrounds(page) == before and shown_importances(page) == {}

    page.fill("#attr-passes", str(REAGENT_PASSES))
    body = click_and_ask(page, TARGET)
    assert body["method"] == "reagent" and body["max_passes"] == REAGENT_PASSES
    answer = alpha.post("/v1/analysis/attribution", json=body).json()
    importance = answer["targets"][0]["importance"]
    assert shown_importances(page) == dict(enumerate(importance))
    assert abs(sum(importance) - 1.0) < 1e-6 and min(importance) >= 0.0
    assert "converged" in page.locator("#attr-status").inner_text()
    assert "of the importance" in page.locator("#legend").inner_text()

    page.locator("#tokens .tok").nth(1).click()  # token 1 has too little context: an error, no colouring
    assert "too little context" in page.locator("#attr-status").inner_text()
    assert page.locator("#attr-status.error").count() == 1
    assert backgrounds(page) == before and shown_importances(page) == {}
    assert not page.script_errors  # type: ignore[attr-defined]
