"""The page with a trained head: picked from GET /v1/heads, its score in the summary and the tokens coloured by
PAWN's gate weights (headless Chromium against the live service); the screenshot is kept in
artifacts/page-heads.png."""

from __future__ import annotations

import hashlib
import time

import httpx
from playwright.sync_api import Browser

from app.serving import corpus
from tests.conftest import MODEL
from tests.e2e.conftest import SLOW_MS, open_page, screenshot

TEXT = "The committee met on Tuesday. Everyone agreed that the bridge needed repairs before winter."


def trained_head(client: httpx.Client, kind: str = "pawn", name: str = "speech_vs_plot") -> dict[str, object]:
    """A head (PAWN unless said) that tells plot summaries (label 0) from convention speeches (label 1): texts that
    ship in a package, no generation needed. One trained earlier in this session under the same name is reused."""
    for head in client.get("/v1/heads").json()["data"]:
        if head["name"] == name and head["kind"] == kind and head["model"] == MODEL and head["status"] == "succeeded":
            return head  # type: ignore[no-any-return]
    plots = [" ".join(p.split()[:40]) for p in corpus.plots()[:6]]
    speeches = [" ".join(p.split()[:40]) for p in corpus.speeches()[:6]]
    examples = [{"text": t, "label": 0} for t in plots] + [{"text": t, "label": 1} for t in speeches]
    params = {"gate_dims": 8} if kind == "pawn" else {}
    body = {"name": name, "kind": kind, "model": MODEL, "examples": examples, "params": params}
    response = client.post("/v1/heads", json=body)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 300
    while (head := client.get(f"/v1/heads/{response.json()['id']}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert head["status"] == "succeeded", head
    return head  # type: ignore[no-any-return]


def test_a_head_without_per_token_weights_says_why_nothing_is_coloured(
    alpha: httpx.Client, browser: Browser, service: str
) -> None:
    """A probe head scores the whole text: coloured by it, no token is coloured and the legend says why."""
    head = trained_head(alpha, kind="probe", name="probe_speech_vs_plot")
    page = open_page(browser, service)
    try:
        listed = f"() => [...document.querySelectorAll('#head option')].some(o => o.value === '{head['id']}')"
        page.wait_for_function(listed)
        page.select_option("#head", str(head["id"]))
        page.fill("#text", TEXT)
        page.select_option("#metric", "head")
        page.click("#score")
        page.wait_for_selector("#heads-table", timeout=SLOW_MS)
        legend = page.locator("#legend").inner_text()
        assert "probe_speech_vs_plot (probe)" in legend and "no per-token weights" in legend
        backgrounds = page.locator("#tokens .tok").evaluate_all("els => els.map(e => e.style.background)")
        assert set(backgrounds) == {""}
    finally:
        page.close()


def test_page_shows_a_heads_score_and_colours_by_its_gate(alpha: httpx.Client, browser: Browser, service: str) -> None:
    head = trained_head(alpha)
    page = open_page(browser, service)  # opened after training: the head is in the list
    try:
        listed = f"() => [...document.querySelectorAll('#head option')].some(o => o.value === '{head['id']}')"
        page.wait_for_function(listed)
        assert page.locator("#head").input_value() == ""  # listed, not picked for you
        assert head["created_by"] == "key " + hashlib.sha256(b"key-alpha").hexdigest()[:8]
        option = page.locator(f"#head option[value='{head['id']}']").inner_text()
        assert "made by you" in option and "12 examples" in option and " UTC" in option  # who, how many, when
        page.select_option("#head", str(head["id"]))
        page.fill("#text", TEXT)
        page.select_option("#metric", "head")
        page.click("#score")
        page.wait_for_selector("#heads-table", timeout=SLOW_MS)
        assert "speech_vs_plot" in page.locator("#heads-table").inner_text()
        assert "label" in page.locator("#heads-table").inner_text()

        tokens = page.locator("#tokens .tok")
        backgrounds = tokens.evaluate_all("els => els.map(e => e.style.background)")
        assert backgrounds[0] == "" and all(b.startswith("rgb") for b in backgrounds[1:])
        assert len(set(backgrounds[1:])) > 3  # the gate weighs tokens differently
        assert "speech_vs_plot" in page.locator("#legend").inner_text()
        tokens.nth(4).hover()
        assert "speech_vs_plot" in page.locator("#tooltip").inner_text()  # the token's weight in the hover
        screenshot(page, "page-heads")
    finally:
        page.close()


def test_a_uniform_gate_colours_nothing_and_says_why(alpha: httpx.Client, browser: Browser, service: str) -> None:
    """A PAWN gate over a text with one predicted token gives it all the weight: every token weighs the same, so
    none stands out. Painted by a least-to-most scale it would all be 'most weight'; the page colours nothing and
    its legend says why (analyse.js's `uniform`)."""
    head = trained_head(alpha)
    text = "Hello world"
    body = {"model": MODEL, "text": text, "methods": [], "heads": [head["id"]]}
    answer = alpha.post("/v1/analysis/detect", json=body)
    weights = [t["values"]["speech_vs_plot"] for t in answer.json()["tokens"]]
    assert len(weights) == 1 and weights[0] == 1.0  # the gate's softmax over one position: uniform
    page = open_page(browser, service)
    try:
        listed = f"() => [...document.querySelectorAll('#head option')].some(o => o.value === '{head['id']}')"
        page.wait_for_function(listed)
        page.select_option("#head", str(head["id"]))
        page.select_option("#metric", "head")
        page.fill("#text", text)
        page.click("#score")
        page.wait_for_selector("#heads-table", timeout=SLOW_MS)
        tokens = page.locator("#tokens .tok")
        assert tokens.count() == 2
        legend = page.locator("#legend").inner_text()
        assert legend == "speech_vs_plot weighs every token the same here: no token stands out, so none is coloured"
        assert "most weight" not in legend
        assert set(tokens.evaluate_all("els => els.map(e => e.style.background)")) == {""}
        tokens.nth(1).hover()
        assert "speech_vs_plot 1.00" in page.locator("#tooltip").inner_text()  # the weight is still shown
    finally:
        page.close()
