"""The service runs from a plain install (`scripts/install`, no dev extra): nothing under app/ or workers/ may
import a package that only the dev extra brings (a quick start once failed on scipy)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPORT_NAMES = {"pyyaml": "yaml", "types-pyyaml": "yaml"}  # distributions whose module has another name


def dev_only_modules() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runtime = {_name(d) for d in [*project["dependencies"], *extras["gateway"], *extras["hf"]]}
    dev = {_name(d) for d in extras["dev"]} - runtime
    return {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in dev}


def _name(requirement: str) -> str:
    for stop in "<>=!~[ ;":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def test_the_service_imports_nothing_from_the_dev_extra() -> None:
    forbidden = dev_only_modules()
    assert {"scipy", "pytest", "yaml", "aiohttp"} <= forbidden
    offenders = []
    for path in sorted([*(ROOT / "app").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in forbidden]
    assert offenders == []
