"""The Lens panel in headless Chromium against the live service: the layer × position heatmap holds
/v1/analysis/lens's values for the metric the user picks, every layer and position once, and hovering a cell shows
that layer's top tokens at that position."""

from __future__ import annotations

import math
import time

import httpx
from playwright.sync_api import Page

from tests.conftest import MODEL
from tests.e2e.conftest import REFERENCE, SLOW_MS, screenshot

TEXT = "The capital of France is Paris, and the capital of Italy is Rome."


def grid(page: Page) -> dict[tuple[int, int], float]:
    cells = page.locator("#lens-grid td.cell").evaluate_all(
        "els => els.map(e => [Number(e.dataset.layer), Number(e.dataset.index), Number(e.dataset.value)])"
    )
    shown = {(layer, position): value for layer, position, value in cells}
    assert len(shown) == len(cells)  # each cell once
    return shown


def test_lens_heatmap_holds_the_apis_values(page: Page, alpha: httpx.Client) -> None:
    page.fill("#topk", "4")
    page.click("#tabs [data-tab=lens]")
    page.fill("#lens-text", TEXT)
    page.select_option("#lens-metric", "kl_to_final")
    page.click("#lens-run")
    page.wait_for_selector("#lens-grid td.cell", timeout=SLOW_MS)
    answer = alpha.post("/v1/analysis/lens", json={"model": MODEL, "text": TEXT, "top_logprobs": 4}).json()
    assert len(answer["layers"]) == answer["n_layers"] + 1
    n = len(answer["positions"]) - 1
    for metric in ("kl_to_final", "entropy", "rank", "logprob"):
        page.select_option("#lens-metric", metric)
        expected = {
            (layer["layer"], p): layer["tokens"][p][metric] for layer in answer["layers"] for p in range(1, n + 1)
        }
        assert grid(page) == expected  # exactly the API's numbers, every layer × position
    # rows run from the final layer down to the embeddings
    rows = page.locator("#lens-grid tbody tr[data-layer]")
    layers = rows.evaluate_all("rows => rows.map(r => Number(r.dataset.layer))")
    assert layers == sorted((layer["layer"] for layer in answer["layers"]), reverse=True)
    backgrounds = page.locator("#lens-grid td.cell").evaluate_all("els => els.map(e => e.style.background)")
    assert all(b.startswith("rgb") for b in backgrounds) and len(set(backgrounds)) > 5
    settled = page.locator("#lens-grid tr.settled td").all_inner_texts()
    layers_settled = [p["settled_layer"] for p in answer["positions"][1:]]
    assert settled == [str(s) if s is not None else "—" for s in layers_settled]

    layer, position = answer["n_layers"] // 2, 6
    page.locator(f"#lens-grid td.cell[data-layer='{layer}'][data-index='{position}']").hover()
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert f"layer {layer} · position {position}" in text
    top = answer["layers"][layer]["tokens"][position]["top_logprobs"]
    assert page.locator("#tooltip tr").count() == len(top) == 4
    for alternative in top:  # that layer's top tokens at that position, with their probabilities
        assert f"{100 * math.exp(alternative['logprob']):.2f}%" in text
    cell_text = page.locator(f"#lens-grid td.cell[data-layer='{layer}'][data-index='{position}']").inner_text()
    assert cell_text == top[0]["token"]
    screenshot(page, "page-lens")
    status = page.locator("#lens-status").inner_text()
    assert status.startswith(f"{MODEL} · logit lens · {len(answer['layers'])} layers")

    page.select_option("#model", REFERENCE)  # another model: the old model's heatmap goes
    assert page.locator("#lens-grid td.cell").count() == 0


def test_changing_the_model_while_the_lens_reads_drops_it_without_an_error(page: Page) -> None:
    """The request still running is dropped (the gateway cancels its job when the request goes): no heatmap of the
    old model and no error, whether the answer came before the change or not."""
    page.click("#tabs [data-tab=lens]")
    page.fill("#lens-text", " ".join([TEXT] * 6))
    page.click("#lens-run")
    page.wait_for_function("() => document.querySelector('#lens-run').disabled")
    page.select_option("#model", REFERENCE)
    page.wait_for_function("() => !document.querySelector('#lens-run').disabled", timeout=SLOW_MS)
    assert page.locator("#lens-grid td.cell").count() == 0
    assert "error" not in (page.locator("#lens-status").get_attribute("class") or "")
    assert page.script_errors == []  # type: ignore[attr-defined]


def test_the_switch_reads_the_text_through_a_trained_tuned_lens(page: Page, alpha: httpx.Client) -> None:
    """A tuned lens of the tiny model (a `lens` head, a few steps) in the switch: the heatmap holds the API's values
    for `lens` = its id, which differ from the logit lens's below the last layer; the logit lens stays the default."""
    texts = [{"text": f"{TEXT} Number {i}: the harbour was quiet that night."} for i in range(4)]
    body = {"model": REFERENCE, "name": "page_lens", "kind": "lens", "examples": texts, "params": {"steps": 3}}
    created = alpha.post("/v1/heads", json=body)
    assert created.status_code == 202, created.text
    head_id = created.json()["id"]
    deadline = time.monotonic() + SLOW_MS / 1000
    while (head := alpha.get(f"/v1/heads/{head_id}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert head["status"] == "succeeded", head

    page.select_option("#model", REFERENCE)
    page.click("#tabs [data-tab=lens]")
    page.wait_for_selector(f"#lens-kind option[value='{head_id}']", state="attached", timeout=SLOW_MS)
    assert page.locator("#lens-kind").input_value() == "logit"
    page.select_option("#lens-kind", head_id)
    page.fill("#lens-text", TEXT)
    page.select_option("#lens-metric", "kl_to_final")
    page.click("#lens-run")
    page.wait_for_selector("#lens-grid td.cell", timeout=SLOW_MS)
    asked = {"model": REFERENCE, "text": TEXT, "top_logprobs": int(page.input_value("#topk"))}
    tuned = alpha.post("/v1/analysis/lens", json={**asked, "lens": head_id}).json()
    logit = alpha.post("/v1/analysis/lens", json=asked).json()
    n = len(tuned["positions"]) - 1
    for metric in ("kl_to_final", "entropy"):
        page.select_option("#lens-metric", metric)
        expected = {
            (layer["layer"], p): layer["tokens"][p][metric] for layer in tuned["layers"] for p in range(1, n + 1)
        }
        assert grid(page) == expected
    below = [(layer["layer"], p) for layer in logit["layers"][:-1] for p in range(1, n + 1)]
    other = {(layer["layer"], p): layer["tokens"][p]["entropy"] for layer in logit["layers"] for p in range(1, n + 1)}
    assert any(grid(page)[key] != other[key] for key in below)  # not the logit lens's values
    assert "tuned lens page_lens" in page.locator("#lens-status").inner_text()
    assert alpha.delete(f"/v1/heads/{head_id}").status_code == 204
