"""Imports run one way through the layers (app/__init__.py draws them): a route module is imported by no one
below it, the client and the schemas need nothing of the gateway, and the workers import nothing from `app`.

Every import statement counts, also those inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The byte-level records' format and their statistics: contract both sides read, like workers.contract.
BYTE_CONTRACT = ("workers.bytelevel.records", "workers.bytelevel.stats")
# What each part of the tree may import, besides itself (third-party packages are another test's business).
ALLOWED: dict[str, set[str]] = {
    "logprobe": {"logprobe.client"},
    "logprobe.schemas": set(),
    "logprobe.client": {"logprobe.schemas"},
    "app.platform": {"workers.config", "workers.contract", "workers.redis_client"},
    "app.analysis": {"logprobe.schemas", "workers.contract"},
    "app.serving": {
        "app.analysis",
        "logprobe.schemas",
        "app.platform",
        "workers.config",
        "workers.contract",
        *BYTE_CONTRACT,
        "workers.redis_client",
    },
    "app.batches": {"app.serving", "app.analysis", "logprobe.schemas", "app.platform", "workers.contract"},
    "app.api": {
        "app.batches",
        "app.serving",
        "app.analysis",
        "logprobe.schemas",
        "app.platform",
        "workers.contract",
        "workers.redis_client",
    },
    "app.launcher": {"app", "workers", "logprobe"},
    "workers": {"workers"},
}
# Third-party packages that the client and the schemas must never import (a plain install lacks them).
GATEWAY_ONLY = {"fastapi", "starlette", "uvicorn", "redis", "safetensors", "tokenizers", "jinja2", "torch"}


def part_of(module: str) -> str:
    """The layer a module belongs to: the longest key of ALLOWED that is a prefix of it."""
    matches = [p for p in ALLOWED if module == p or module.startswith(p + ".")]
    assert matches, f"{module} belongs to no layer: add its folder to ALLOWED and app/__init__.py"
    return max(matches, key=len)


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names if node.module == "app"]
    return found


def modules() -> dict[str, Path]:
    found = {}
    client = ROOT / "client"  # the client's own distribution: client/logprobe
    for path in sorted([*(ROOT / "app").rglob("*.py"), *(ROOT / "workers").rglob("*.py"), *client.rglob("*.py")]):
        parts = path.relative_to(client if path.is_relative_to(client) else ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def allowed(source: str, target: str) -> bool:
    if target == "app":  # `from app import x` is judged by x (imports() adds app.x)
        return True
    mine = part_of(source)
    return any(target == p or target.startswith(p + ".") for p in {mine, *ALLOWED[mine]})


def test_imports_run_one_way() -> None:
    offenders = []
    for name, path in modules().items():
        if name == "app":
            continue
        for line, target in imports(path):
            if target.split(".")[0] in ("app", "workers", "logprobe") and not allowed(name, target):
                offenders.append(f"{path.relative_to(ROOT)}:{line} {part_of(name)} imports {target}")
    assert offenders == []


def test_client_and_schemas_need_nothing_of_the_gateway() -> None:
    offenders = []
    for name, path in modules().items():
        if name != "app" and part_of(name) in ("logprobe.client", "logprobe.schemas"):
            offenders += [
                f"{path.relative_to(ROOT)}:{line} {target}"
                for line, target in imports(path)
                if target.split(".")[0] in GATEWAY_ONLY
            ]
    assert offenders == []


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    """A service that imports a route module, even inside a function, is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from app.api.analysis import analyse\n")
    (line, target), *_ = imports(bad)
    assert (line, target) == (2, "app.api.analysis")
    assert not allowed("app.batches.runner", target)
    assert not allowed("workers.runner", "app.platform.settings")
    assert not allowed("logprobe.client", "app.serving.text")
    assert allowed("app.api.score", "app.serving.inputs")


def test_every_folder_says_what_lives_there_and_what_it_may_import() -> None:
    for folder in sorted(p.parent for p in (ROOT / "app").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc, f"{folder.relative_to(ROOT)}/__init__.py has no docstring"
        assert "import" in doc.lower(), f"{folder.relative_to(ROOT)}/__init__.py does not say what it may import"


def test_no_import_circle() -> None:
    """No module reaches itself through the project's own imports (each one counted, as above)."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for _, target in imports(path):
            parts = target.split(".")
            found = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in known), None)
            if found is not None and found != name and found not in ("app", "workers"):
                graph[name].add(found)
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert circles == []
