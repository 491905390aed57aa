"""The Analyse panel's full-row export and membership view in headless Chromium against the live service: the
downloaded safetensors file is byte for byte the API's export of the same record, announced with its size before
it starts; the membership family's sequence values and the per-token Min-K%++ z-scores the tokens are coloured by
are /v1/analysis/membership's."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
from playwright.sync_api import Page
from safetensors.numpy import load

from tests.e2e.conftest import SLOW_MS, screenshot

TEXT = "The committee met on Tuesday. Everyone agreed that the bridge needed repairs before winter."


def score(page: Page) -> str:
    page.fill("#text", TEXT)
    page.click("#score")
    page.wait_for_selector("#membership-table", timeout=SLOW_MS)
    return page.locator("#status").inner_text().split("record ")[-1].strip()


def test_full_rows_download_equals_the_apis_export(page: Page, alpha: httpx.Client) -> None:
    record_id = score(page)
    record = alpha.get(f"/v1/records/{record_id}?top_logprobs=0").json()
    button = page.locator("#export-rows")
    button.wait_for(state="visible")
    positions, vocab = record["n_tokens"] - 1, record["vocab_size"]
    size = positions * vocab * 4
    assert button.get_attribute("data-bytes") == str(size)  # said before the download starts
    note = page.locator("#rows-note").inner_text()
    assert f"{positions} positions × {vocab} log-probabilities" in note and f"{size / 1e6:.1f} MB" in note

    with page.expect_download() as download:
        button.click()
    assert download.value.suggested_filename == f"{record_id}.logprobs.safetensors"
    downloaded = Path(download.value.path()).read_bytes()
    exported = alpha.get(f"/v1/records/{record_id}/logprobs")
    assert exported.status_code == 200
    assert downloaded == exported.content  # the same file, byte for byte
    rows = load(downloaded)["logprobs"]
    assert rows.shape == (positions, vocab)
    chosen = rows[np.arange(positions), [t["id"] for t in record["tokens"][1:]]]
    assert np.allclose(chosen, [t["logprob"] for t in record["tokens"][1:]], atol=1e-5)  # the rows the tokens came from


def test_membership_values_and_colouring_are_the_apis(page: Page, alpha: httpx.Client) -> None:
    record_id = score(page)
    body = {"record_id": record_id, "methods": ["min_k", "min_k_plus_plus", "dc_pdd", "min_k_zscore"]}
    answer = alpha.post("/v1/analysis/membership", json=body).json()
    table = page.locator("#membership-table tbody tr")
    names = table.evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names == list(answer["sequence"]) and {"min_k", "min_k_plus_plus", "dc_pdd"} <= set(names)
    for i, name in enumerate(names):
        shown = table.nth(i).locator(".value").inner_text()
        assert float(shown) == float(f"{answer['sequence'][name]:.4g}")
        assert table.nth(i).locator(".direction").inner_text() == "higher means more likely in the training data"

    page.select_option("#metric", "membership")
    tokens = page.locator("#tokens .tok")
    values = tokens.evaluate_all("els => els.map(e => e.dataset.value === undefined ? null : Number(e.dataset.value))")
    expected = {t["position"]: t["values"]["min_k_zscore"] for t in answer["tokens"]}
    assert values[0] is None and len(values) == len(expected) + 1
    assert {i: v for i, v in enumerate(values) if i > 0} == expected  # exactly the API's z-scores
    backgrounds = tokens.evaluate_all("els => els.map(e => e.style.background)")
    assert backgrounds[0] == "" and len(set(backgrounds[1:])) > 3
    lowest = min(expected, key=lambda p: expected[p])
    highest = max(expected, key=lambda p: expected[p])
    hues = tokens.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert hues[lowest] != hues[highest]
    assert "Min-K%++" in page.locator("#legend").inner_text()
    tokens.nth(lowest).hover()
    assert f"Min-K%++ z {expected[lowest]:.3f}" in page.locator("#tooltip").inner_text()
    screenshot(page, "page-membership")
