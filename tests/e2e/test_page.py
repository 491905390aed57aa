"""The Analyse panel in headless Chromium against the live service: coloured tokens with visible boundaries,
alternatives on hover, plots with one point per token, the summary's directions, CSV/JSON export that matches
the API, chat input, generation's prompt/completion mark and special tokens, records by id, errors that clear
the old result, a favicon, and a layout that stacks at 800 px. Screenshots are kept in artifacts/."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from app.launcher.local_service import ROOT
from app.serving import corpus
from tests.conftest import MODEL
from tests.e2e.conftest import SLOW_MS, open_page, screenshot

TEXT = "The committee met on Tuesday. Everyone agreed that the bridge needed repairs before winter."
GLTR_COLOURS = {"rgb(163, 228, 160)", "rgb(249, 231, 159)", "rgb(245, 183, 177)", "rgb(210, 180, 222)"}


def score(page: Page, text: str = TEXT) -> None:
    page.fill("#text", text)
    page.click("#score")
    page.wait_for_selector("#summary-table", timeout=SLOW_MS)


def record_id(page: Page) -> str:
    return page.locator("#status").inner_text().split("record ")[-1].strip()


def test_page_colours_tokens_and_shows_alternatives(page: Page, alpha: httpx.Client) -> None:
    score(page)
    tokens = page.locator("#tokens .tok")
    n = tokens.count()
    assert n > 10
    assert "".join(tokens.evaluate_all("els => els.map(e => e.dataset.text)")) == TEXT
    backgrounds = tokens.evaluate_all("els => els.map(e => e.style.background)")
    assert backgrounds[0] == "" and all(b.startswith("rgb") for b in backgrounds[1:])  # first has no prediction
    assert len(set(backgrounds[1:])) > 3  # a gradient, not one colour
    # every token is one box (none split across lines) with a hairline edge that neighbours cannot hide
    assert tokens.evaluate_all("els => els.every(e => e.getClientRects().length === 1)")
    assert "inset" in tokens.nth(3).evaluate("e => getComputedStyle(e).boxShadow")

    tokens.nth(5).hover()
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    assert "top alternatives" in tooltip.inner_text() and "rank" in tooltip.inner_text()
    assert page.locator("#tooltip tr").count() == 10

    # the summary: every row says which way it points and what it is, as GET /v1/analysis/methods says
    methods = {m["name"]: m for m in alpha.get("/v1/analysis/methods").json()}
    rows = page.locator("#summary-table tbody tr")
    assert rows.count() > 10
    for i in range(rows.count()):
        name = rows.nth(i).get_attribute("data-name")
        assert name is not None
        method = methods[name.split(".")[0]]
        assert rows.nth(i).locator(".direction").inner_text() == f"higher means {method['higher_means']}"
        explain = rows.nth(i).locator(".explain").inner_text().rstrip("…")
        assert explain and method["description"].startswith(explain)

    # plots: one point per predicted token along the text, and every token in the rank histogram
    assert page.locator("#plot-line").get_attribute("data-points") == str(n - 1)
    assert page.locator("#plot-line .u-over").count() == 1  # drawn
    lengths = page.evaluate("window.lpPlots.get('plot-line').data.map(s => s.length)")
    assert lengths == [n - 1] * 4  # positions, log p, entropy, the entropy trend's block means
    record = alpha.get(f"/v1/records/{record_id(page)}").json()
    ranks = [t["rank"] for t in record["tokens"][1:]]
    buckets = [sum(r <= 10 for r in ranks), sum(10 < r <= 100 for r in ranks), sum(100 < r <= 1000 for r in ranks)]
    buckets.append(len(ranks) - sum(buckets))
    drawn = page.evaluate(
        "(() => { const u = window.lpPlots.get('plot-ranks');"
        " return u.data.slice(1).map(s => s.find(v => v !== null) ?? 0); })()"
    )
    assert drawn == buckets
    screenshot(page, "page-analyse")

    page.select_option("#metric", "gltr")
    gltr = set(tokens.evaluate_all("els => els.slice(1).map(e => getComputedStyle(e).backgroundColor)"))
    assert gltr <= GLTR_COLOURS


def test_export_csv_and_json_match_the_record(page: Page, alpha: httpx.Client) -> None:
    page.fill("#topk", "3")
    score(page, "Rain fell on the harbour all night,\nand by morning the nets were heavy.")
    record = alpha.get(f"/v1/records/{record_id(page)}?top_logprobs=3").json()
    page.locator("#tokens .tok").nth(4).hover()
    assert page.locator("#tooltip tr").count() == 3  # the top-k chosen

    with page.expect_download() as download:
        page.click("#export-csv")
    table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert len(table) == record["n_tokens"]
    for t, (row, token) in enumerate(zip(table, record["tokens"], strict=True)):
        assert int(row["position"]) == t and int(row["id"]) == token["id"] and row["text"] == token["text"]
        if t == 0:
            assert row["logprob"] == row["rank"] == row["entropy"] == ""
            continue
        assert float(row["logprob"]) == token["logprob"] and int(row["rank"]) == token["rank"]
        assert float(row["entropy"]) == token["entropy"]
        assert math.isclose(float(row["prob"]), math.exp(token["logprob"]), rel_tol=1e-12)
        alternatives = json.loads(row["top_alternatives"])
        assert alternatives == [[a["text"], a["logprob"]] for a in token["top_logprobs"]]

    with page.expect_download() as download:
        page.click("#export-json")
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert exported["record_id"] == record["record_id"] and exported["model"] == MODEL
    assert [t["id"] for t in exported["tokens"]] == [t["id"] for t in record["tokens"]]
    assert [t["logprob"] for t in exported["tokens"]] == [t["logprob"] for t in record["tokens"]]
    assert [t["top_logprobs"] for t in exported["tokens"]] == [t["top_logprobs"] for t in record["tokens"]]


def test_chat_generation_marks_the_completion_and_special_tokens(page: Page, alpha: httpx.Client) -> None:
    page.select_option("#input-mode", "chat")
    page.locator("#chat .msg").nth(2).locator("button").click()  # drop the assistant's turn: generate it
    page.fill("#max-tokens", "12")
    page.click("#generate")
    page.wait_for_selector("#summary-table", timeout=SLOW_MS)
    record = alpha.get(f"/v1/records/{record_id(page)}").json()
    assert record["kind"] == "generate" and record["n_prompt"] is not None
    assert "chat model" not in page.locator("#status").inner_text()  # chat input: no hint needed
    # the mark sits right before the first completion token
    before = page.evaluate(
        "(() => { const b = document.querySelector('#tokens .boundary'); let n = 0;"
        " for (let e = b.previousElementSibling; e; e = e.previousElementSibling) if (e.classList.contains('tok')) n++;"
        " return n; })()"
    )
    assert page.locator("#tokens .boundary").count() == 1 and before == record["n_prompt"]
    special = page.locator("#tokens .tok.special").evaluate_all("els => els.map(e => e.textContent)")
    assert special and set(special) <= {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}
    assert special.count("<|im_start|>") == 3  # system, user, and the assistant's opener
    assert [t["text"] for t in record["tokens"] if t["special"]] == special
    screenshot(page, "page-generate")

    # the same record, opened by its id
    page.select_option("#input-mode", "record")
    page.fill("#record-id", record["record_id"])
    page.click("#open")
    page.wait_for_selector("#summary-table", timeout=SLOW_MS)
    assert page.locator("#tokens .tok").count() == record["n_tokens"]
    assert page.locator("#tokens .boundary").count() == 1


def test_generating_from_text_on_a_chat_model_says_what_text_mode_does(page: Page) -> None:
    """Text mode hands a chat model raw text to continue (it often just ends the turn): the status says so and
    points to chat input."""
    page.fill("#text", "What is the capital of France?")
    page.fill("#max-tokens", "3")
    page.click("#generate")
    page.wait_for_selector("#summary-table", timeout=SLOW_MS)
    status = page.locator("#status").inner_text()
    assert f"{MODEL} is a chat model and text mode continues raw text" in status and "Input: chat" in status
    assert record_id(page)  # the record id still ends the status line


def test_an_error_clears_the_previous_result(page: Page) -> None:
    score(page)
    assert page.locator("#tokens .tok").count() > 0
    page.select_option("#input-mode", "record")
    placeholder = page.get_attribute("#record-id", "placeholder") or ""
    assert "32 hex digits" in placeholder and "rec_" not in placeholder  # the ids' real shape
    page.fill("#record-id", "no-such-record")
    page.click("#open")
    page.wait_for_selector("#status.error")
    assert "not_found" in page.locator("#status").inner_text()
    assert page.locator("#tokens .tok").count() == 0
    assert page.locator("#summary").inner_text() == ""
    assert page.locator("#export").is_hidden() and page.locator("#plot-line-fig").is_hidden()


def test_detection_plot_against_a_calibration(page: Page, alpha: httpx.Client, browser: Browser, service: str) -> None:
    plots = [" ".join(p.split()[:30]) for p in corpus.plots()[:3]]
    speeches = [" ".join(p.split()[:30]) for p in corpus.speeches()[:3]]
    texts = [{"text": t, "label": "human"} for t in plots] + [{"text": t, "label": "machine"} for t in speeches]
    body = {"model": MODEL, "texts": texts, "methods": ["log_likelihood", "log_rank", "lrr", "mean_entropy"]}
    response = alpha.post("/v1/calibrations", json=body)
    assert response.status_code == 200, response.text
    calibration = response.json()
    fresh = open_page(browser, service)  # a page that lists the new calibration
    try:
        options = "[...document.querySelectorAll('#calibration option')]"
        fresh.wait_for_function(f"() => {options}.some(o => o.value === '{calibration['calibration_id']}')")
        # nothing applied that was not chosen: the newest calibration is listed, not picked
        assert fresh.locator("#calibration").input_value() == ""
        score(fresh)
        assert fresh.locator("#plot-detect-fig").is_hidden()
        # each entry says who made it, when and on how many examples
        assert calibration["created_by"] == "key " + hashlib.sha256(b"key-alpha").hexdigest()[:8]
        assert calibration["n_texts"] == 6
        option = fresh.locator(f"#calibration option[value='{calibration['calibration_id']}']").inner_text()
        assert "made by you" in option and "6 examples" in option and " UTC" in option
        fresh.select_option("#calibration", calibration["calibration_id"])  # chosen: applied to the shown text
        fresh.wait_for_selector("#plot-detect .u-over", timeout=SLOW_MS)
        assert calibration["calibration_id"] in fresh.locator("#plot-detect-caption").inner_text()
        detect = alpha.post(
            "/v1/analysis/detect",
            json={"record_id": record_id(fresh), "calibration_id": calibration["calibration_id"]},
        ).json()
        margins: list[Any] = fresh.evaluate(
            "(() => { const u = window.lpPlots.get('plot-detect');"
            " return u.data[0].map((_, i) => u.data[1][i] ?? u.data[2][i]); })()"
        )
        expected = [d["sign"] * detect["sequence"][name] - d["threshold"] for name, d in detect["decisions"].items()]
        assert margins == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert len(margins) == 4
        screenshot(fresh, "page-detect", "#plots")
    finally:
        fresh.close()


def test_narrow_window_stacks_the_columns(browser: Browser, service: str) -> None:
    page = open_page(browser, service, width=800)
    try:
        score(page)
        controls = page.locator("#panel-analyse .controls").bounding_box()
        results = page.locator("#results").bounding_box()
        assert controls and results
        assert results["y"] >= controls["y"] + controls["height"]  # below, not beside
        assert results["width"] > 700
        line = page.locator("#plot-line").bounding_box()
        assert line and line["x"] + line["width"] <= 800  # the plot fits the window
        assert page.evaluate("document.documentElement.scrollWidth") <= 800  # nothing sticks out sideways
        screenshot(page, "page-narrow")
        page.click("#tabs [data-tab=compare]")  # the two sides of a comparison stack too
        first, second = (page.locator(".side").nth(i).bounding_box() for i in range(2))
        assert first and second and second["y"] >= first["y"] + first["height"]
    finally:
        page.close()


def test_favicon_and_assets_are_served_and_nothing_is_missing(browser: Browser, service: str) -> None:
    page = open_page(browser, service)
    try:
        page.wait_for_timeout(500)
        missing = [f for f in page.failures if f.startswith("404")]  # type: ignore[attr-defined]
        assert missing == [] and page.script_errors == []  # type: ignore[attr-defined]
    finally:
        page.close()
    favicon = httpx.get(f"{service}/favicon.ico")
    assert favicon.status_code == 200 and favicon.headers["content-type"].startswith("image/svg+xml")
    plotting = httpx.get(f"{service}/web/vendor/uplot/uPlot.iife.min.js")
    assert plotting.status_code == 200 and "uPlot" in plotting.text
    # httpx resolves "..": /api/web.py, no route; without a key the key gate answers 401 before routing
    assert httpx.get(f"{service}/web/../api/web.py", headers={"Authorization": "Bearer key-alpha"}).status_code == 404
    assert httpx.get(f"{service}/web/nothing.js").json()["error"]["code"] == "not_found"


def test_the_readme_names_the_pages_tabs() -> None:
    """The README's page section counts and names the tabs the page has (it said "three" and listed five)."""
    page = (ROOT / "app" / "web" / "index.html").read_text()
    tabs = re.findall(r'<button role="tab" data-tab="\w+"[^>]*>([^<]+)</button>', page)
    section = (ROOT / "README.md").read_text().split("## The page", 1)[1].split("\n## ", 1)[0]
    said = re.search(r"(\w+) tabs — ([^—]+) —", section)
    assert said, "the README's page section names its tabs"
    numbers = {"Two": 2, "Three": 3, "Four": 4, "Five": 5, "Six": 6}
    assert numbers[said.group(1)] == len(tabs) and [t.strip() for t in said.group(2).split(",")] == tabs
    bolded = re.findall(r"^- \*\*(\w+)\*\*(?! \(in )", section, re.M)  # top-level entries not inside a tab
    assert bolded == tabs


def test_the_page_is_open_and_the_docs_need_a_key(service: str) -> None:
    """The page is served to anyone (it holds no data; its calls carry the key); the API's description needs a
    key unless LOGPROBE_PUBLIC_DOCS opens it (tests/integration/test_exposure.py)."""
    assert httpx.get(f"{service}/").status_code == 200
    for path in ("/docs", "/redoc", "/openapi.json"):
        refused = httpx.get(f"{service}{path}")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", path
        assert httpx.get(f"{service}{path}", headers={"Authorization": "Bearer key-alpha"}).status_code == 200, path


def test_the_page_works_under_its_content_security_policy(page: Page, service: str) -> None:
    """The page and its files come with a CSP that allows only the page's own scripts and styles (no inline ones,
    no eval), nosniff and no framing; scoring and every colour legend run with nothing refused (the `page`
    fixture fails a test on any CSP violation), and the legends are coloured through the DOM."""
    for path in ("/", "/web/js/main.js", "/web/page.css"):
        headers = httpx.get(f"{service}{path}").headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    score(page)
    assert page.evaluate("document.querySelector('#legend .bar').style.background").startswith("linear-gradient")
    page.select_option("#metric", "gltr")
    chips = page.locator("#legend .chip").evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert set(chips) == GLTR_COLOURS
    assert page.csp_violations == []  # type: ignore[attr-defined]


def test_the_api_key_stays_in_the_tab(browser: Browser, service: str) -> None:
    """The key entered is kept in the tab's sessionStorage (a reload keeps it), never in localStorage; a key an
    older page left in localStorage is removed; another tab of the same browser starts without it."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{service}/")
        page.fill("#apikey", "key-alpha")
        page.dispatch_event("#apikey", "change")
        page.wait_for_function("() => document.querySelector('#model').options.length > 0")  # the key works
        assert page.evaluate("localStorage.length") == 0
        assert page.evaluate("sessionStorage.getItem('logprobe.key')") == "key-alpha"
        other = context.new_page()  # a second tab: it would see what localStorage kept
        other.goto(f"{service}/")
        assert other.input_value("#apikey") == ""
        page.evaluate("localStorage.setItem('logprobe.key', 'left-by-an-older-page')")
        page.reload()
        page.wait_for_function("() => document.querySelector('#model').options.length > 0")
        assert page.input_value("#apikey") == "key-alpha"
        assert page.evaluate("localStorage.getItem('logprobe.key')") is None
    finally:
        context.close()
