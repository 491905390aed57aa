"""The page's harness: one live service with SmolLM2 and a tiny random Llama that shares its tokenizer (so the
Compare panel has two models), Debian's headless Chromium driven by Playwright, and a page opened with an API
key and its model list loaded."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, MODEL, service_env

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
REFERENCE = "tiny-llama"
SLOW_MS = 180_000  # a step that runs models on a shared CPU


@pytest.fixture(scope="package")
def page_service(tiny_models: dict[str, str]) -> Iterator[LocalService]:
    models = [MODEL, {"name": REFERENCE, "source": "hf", "path": tiny_models[REFERENCE]}]
    with LocalService(env=service_env(models), log_dir=ARTIFACTS / "page") as service:
        yield service


@pytest.fixture(scope="package")
def service(page_service: LocalService) -> str:
    """The page tests' service (this overrides the suite's one-model `service` under tests/e2e)."""
    return page_service.base_url


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Package-scoped: Playwright's sync API keeps its event loop running in this thread while it is open, and
    every later test that runs a loop of its own (asyncio.run, async tests) would fail."""
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


def open_page(browser: Browser, service: str, width: int = 1280, height: int = 900) -> Page:
    """The page at `width` px with key-alpha entered and the model list loaded; failed responses are kept in
    `page.failures`, errors the page's scripts raise in `page.script_errors`, and what the browser refused under
    the page's Content-Security-Policy in `page.csp_violations`."""
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    failures: list[str] = []
    script_errors: list[str] = []
    csp_violations: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("pageerror", lambda e: script_errors.append(str(e)))
    page.on("console", lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.failures = failures  # type: ignore[attr-defined]
    page.script_errors = script_errors  # type: ignore[attr-defined]
    page.csp_violations = csp_violations  # type: ignore[attr-defined]
    page.goto(f"{service}/")
    page.fill("#apikey", "key-alpha")
    page.dispatch_event("#apikey", "change")
    # wait_for_function takes functions ("() => …") here: a bare expression is eval'd in the page, which its CSP refuses
    page.wait_for_function("() => document.querySelector('#model').options.length > 0")
    return page


@pytest.fixture
def page(browser: Browser, service: str) -> Iterator[Page]:
    page = open_page(browser, service)
    yield page
    violations = page.csp_violations  # type: ignore[attr-defined]
    page.close()
    assert violations == [], violations  # every panel works under the page's Content-Security-Policy


def screenshot(page: Page, name: str, selector: str | None = None) -> None:
    """Keep a screenshot in artifacts/ (the whole page, or one element)."""
    ARTIFACTS.mkdir(exist_ok=True)
    target: Any = page.locator(selector) if selector else page
    target.screenshot(path=str(ARTIFACTS / f"{name}.png"), **({} if selector else {"full_page": True}))
