"""The page's files: every one is in the package data (so installs serve it), the vendored uPlot keeps its
license, and the gateway answers only the files that exist under app/web."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from app.api.web import assets
from app.launcher.local_service import ROOT

WEB = ROOT / "app" / "web"


def test_every_page_file_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app"]
    packaged = {p for pattern in patterns for p in (ROOT / "app").glob(pattern) if p.is_file()}
    on_disk = {p for p in WEB.rglob("*") if p.is_file()}
    assert on_disk - packaged == set()


def test_the_page_assets_are_what_is_on_disk() -> None:
    served = assets()
    assert {"index.html", "page.css", "favicon.svg", "js/main.js", "vendor/uplot/uPlot.iife.min.js"} <= set(served)
    for name, body in served.items():
        assert (WEB / name).read_bytes() == body
    assert "VERSION" not in served and "vendor/uplot/LICENSE" not in served  # only pages, scripts, styles, icons


def test_the_vendored_plotting_library_keeps_its_license_and_version() -> None:
    vendor = WEB / "vendor" / "uplot"
    assert "MIT License" in (vendor / "LICENSE").read_text()
    version = (vendor / "VERSION").read_text().split()[1]
    assert (vendor / "uPlot.iife.min.js").read_text().startswith(f"/*! https://github.com/leeoniya/uPlot (v{version})")


def test_every_script_the_page_loads_exists() -> None:
    index = (WEB / "index.html").read_text()
    for ref in ("/web/page.css", "/web/js/main.js", "/web/vendor/uplot/uPlot.iife.min.js"):
        assert ref in index
    for script in (WEB / "js").glob("*.js"):
        for module in re.findall(r'from "\./([^"]+)"', script.read_text()):
            assert (script.parent / module).is_file(), f"{script.name} imports {module}"


def test_no_path_leaves_the_page_folder() -> None:
    assert all(not Path(name).is_absolute() and ".." not in Path(name).parts for name in assets())
