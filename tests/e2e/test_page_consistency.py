"""The Consistency panel and the membership view's ReCaLL / Con-ReCall in headless Chromium against the live service
(#31): the judged answer, the samples, the similarity heatmap and the method values the page shows are
/v1/analysis/consistency's for the same request; the prefixes the user types give /v1/analysis/membership's ReCaLL
and Con-ReCall."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from tests.conftest import MODEL
from tests.e2e.conftest import SLOW_MS, screenshot

QUESTION = "Name a colour of the sky. One word."
NON_MEMBER = "The zorbling quantifier of Vesh-7 recalibrated its plum lattice at dawn. "
MEMBER = "We hold these truths to be self-evident, that all men are created equal. "
TEXT = "Four score and seven years ago our fathers brought forth on this continent, a new nation."


def same_shown(shown: str, value: float | None) -> bool:
    """Whether the page shows `value` (formatValue in tokens.js: 4 significant digits, "—" for none)."""
    if value is None:
        return shown == "—"
    return float(shown.split(" · ")[0]) == float(f"{value:.4g}")


def test_consistency_panel_shows_the_apis_answer(page: Page, alpha: httpx.Client) -> None:
    page.click("#tabs [data-tab=consistency]")
    page.wait_for_selector("#cons-methods input", timeout=SLOW_MS)
    page.fill("#cons-question", QUESTION)
    page.fill("#cons-n", "3")
    page.fill("#cons-temp", "1.2")
    page.fill("#cons-max", "6")
    page.fill("#cons-seed", "17")
    page.click("#cons-run")
    page.wait_for_selector("#cons-table", timeout=SLOW_MS)
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "n": 3,
        "temperature": 1.2,
        "max_tokens": 6,
        "seed": 17,
        "similarity": "lexical",
    }
    answer = alpha.post("/v1/analysis/consistency", json=request, timeout=600).json()

    assert page.locator("#cons-judged").text_content() == answer["answer"]["text"]
    assert same_shown(page.locator("#cons-ptrue").inner_text(), answer["answer"]["p_true"])
    rows = page.locator("#cons-samples tbody tr")
    assert rows.evaluate_all("rs => rs.map(r => Number(r.dataset.index))") == [0, 1, 2]
    texts = page.locator("#cons-samples td.text").evaluate_all("els => els.map(e => e.textContent)")
    assert texts == [s["text"] for s in answer["samples"]]

    cells = page.locator("#cons-matrix td.cell").evaluate_all(
        "els => els.map(e => [e.dataset.i, Number(e.dataset.j), Number(e.dataset.value)])"
    )
    expected = {("answer", j): v for j, v in enumerate(answer["answer"]["similarity"])}
    expected |= {(str(i), j): v for i, row in enumerate(answer["similarity"]) for j, v in enumerate(row)}
    assert {(i, j): v for i, j, v in cells} == expected and len(cells) == len(expected)  # exactly the API's matrix
    backgrounds = page.locator("#cons-matrix td.cell").evaluate_all("els => els.map(e => e.style.background)")
    assert all(b.startswith("rgb") for b in backgrounds)

    table = page.locator("#cons-table tbody tr")
    names = table.evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names == list(answer["sequence"]) and len(names) == 11
    for i, name in enumerate(names):
        assert same_shown(table.nth(i).locator(".value").inner_text(), answer["sequence"][name]), name
    screenshot(page, "page-consistency")


def test_ticked_methods_and_a_given_answer_are_sent(page: Page, alpha: httpx.Client) -> None:
    page.click("#tabs [data-tab=consistency]")
    page.wait_for_selector("#cons-methods input", timeout=SLOW_MS)
    page.select_option("#cons-mode", "prompt")
    page.fill("#cons-question", "The sky is")
    page.fill("#cons-answer", " blue")
    page.fill("#cons-n", "2")
    page.fill("#cons-max", "4")
    page.fill("#cons-seed", "5")
    for name in ("semantic_entropy", "eccentricity"):
        page.check(f"#cons-methods input[value={name}]")
    page.click("#cons-run")
    page.wait_for_selector("#cons-table", timeout=SLOW_MS)
    request = {
        "model": MODEL,
        "prompt": "The sky is",
        "answer": " blue",
        "n": 2,
        "max_tokens": 4,
        "seed": 5,
        "methods": ["semantic_entropy", "eccentricity"],
    }
    answer = alpha.post("/v1/analysis/consistency", json=request, timeout=600).json()
    names = page.locator("#cons-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names == ["semantic_entropy", "eccentricity"] == answer["methods"]
    values = page.locator("#cons-table tbody tr .value").all_inner_texts()
    assert all(same_shown(v, answer["sequence"][n]) for v, n in zip(values, names, strict=True))
    assert page.locator("#cons-judged").text_content() == " blue" == answer["answer"]["text"]
    assert "the answer you gave" in page.locator("#cons-answer-box").inner_text()


@pytest.mark.parametrize("member", [False, True])
def test_membership_view_runs_recall_and_con_recall_with_the_prefixes(
    page: Page, alpha: httpx.Client, member: bool
) -> None:
    page.fill("#text", TEXT)
    page.fill("#prefix", NON_MEMBER)
    if member:
        page.fill("#member-prefix", MEMBER)
    page.click("#score")
    page.wait_for_selector("#membership-table", timeout=SLOW_MS)
    record_id = page.locator("#status").inner_text().split("record ")[-1].strip()
    methods = ["min_k", "min_k_plus_plus", "dc_pdd", "min_k_zscore", "recall", *(["con_recall"] if member else [])]
    body = {"record_id": record_id, "methods": methods, "prefix": NON_MEMBER}
    if member:
        body["member_prefix"] = MEMBER
    answer = alpha.post("/v1/analysis/membership", json=body).json()
    table = page.locator("#membership-table tbody tr")
    names = table.evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names == list(answer["sequence"]) and "recall" in names and ("con_recall" in names) is member
    for i, name in enumerate(names):
        assert same_shown(table.nth(i).locator(".value").inner_text(), answer["sequence"][name]), name
    assert answer["sequence"]["recall"] != pytest.approx(1.0, abs=1e-3)  # the prefix changed the likelihood
