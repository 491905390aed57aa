"""Request validation errors as one clear message that names the field itself.

pydantic reports a union's failure once per branch, with the branch's tag in the location
(`span.literal['all','prompt','completion']`, `span.SpanRange`, `span.list[int]`). Here the tags come out of
the path (a location part that is not in the request body is a tag), a union whose every branch refused the
value's shape becomes one message listing what the field accepts, and a branch that took the shape and failed
inside speaks for the union. A non-finite number is "must be a finite number", whatever the bound it broke.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, get_args

from pydantic_core.core_schema import ErrorType

BUILTIN_TYPES = frozenset(get_args(ErrorType))  # anything else is a schema's own code (PydanticCustomError)
SOURCES = ("body", "query", "path", "header", "cookie")
MAX_PROBLEMS = 5
SCALARS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean", "none": "null"}
PLURALS = {"str": "strings", "int": "integers", "float": "numbers", "bool": "booleans"}

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: where (the field's own path), what, and its code."""

    path: Path
    message: str
    code: str = "invalid_request"

    @property
    def param(self) -> str | None:
        return dotted(self.path) or None

    def text(self) -> str:
        return f"{dotted(self.path)}: {self.message}" if self.path else self.message


def dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


@dataclass
class _Located:
    path: Path
    union: Path | None  # the path of the union whose branch this error came from
    tag: str | None
    error: dict[str, Any]


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _locate(error: dict[str, Any], body: Any) -> _Located:
    """Split an error's location into the field path and the union branch tags, by walking the body."""
    loc = list(error.get("loc", ()))
    source = loc.pop(0) if loc and loc[0] in SOURCES else "body"
    if source != "body":
        return _Located(tuple(loc), None, None, error)
    path: list[str | int] = []
    union: Path | None = None
    tag: str | None = None
    node, known = body, True
    for i, part in enumerate(loc):
        if _has(node, part):
            node = node[part]
        elif not known or isinstance(part, int) or (i == len(loc) - 1 and error.get("type") == "missing"):
            known = False
        else:  # not in the body: a union branch's tag
            if union is None:
                union, tag = tuple(path), str(part)
            continue
        path.append(part)
    return _Located(tuple(path), union, tag, error)


def _describe(tag: str, error: dict[str, Any]) -> str:
    """What a union branch accepts, in words."""
    if tag.startswith("literal[") and error.get("type") == "literal_error":
        return str(error.get("msg", tag)).removeprefix("Input should be ")
    if tag in SCALARS:
        return SCALARS[tag]
    inner = re.fullmatch(r"(list|set|tuple)\[(\w+)\]", tag)
    if inner:
        return f"a list of {PLURALS.get(inner.group(2), inner.group(2))}"
    if tag.startswith(("list[", "set[", "tuple[")):
        return "a list"
    if tag.startswith("dict[") or tag[:1].isupper():  # a mapping or a model
        return "an object"
    return tag


def _message(error: dict[str, Any]) -> str:
    value = error.get("input")
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    return str(error.get("msg", "is invalid"))


def _type_error(error: dict[str, Any]) -> bool:
    """An error about the value's type (a string where a list was wanted…), not about its value."""
    kind = str(error.get("type", ""))
    return kind.endswith("_type") or kind in {"int_from_float", "int_parsing", "float_parsing", "is_instance_of"}


def _code(error: dict[str, Any]) -> str:
    kind = str(error.get("type", ""))
    return kind if kind and kind not in BUILTIN_TYPES else "invalid_request"


def problems(errors: list[dict[str, Any]], body: Any) -> list[Problem]:
    """pydantic's errors for a request, each union collapsed to the one problem a user can act on."""
    located = [_locate(e, body) for e in errors]
    unions: dict[Path, list[_Located]] = {}
    for item in located:
        if item.union is not None:
            unions.setdefault(item.union, []).append(item)
    out: list[Problem] = []
    done: set[Path] = set()
    for item in located:
        if item.union is None:
            out.append(Problem(item.path, _message(item.error), _code(item.error)))
            continue
        if item.union in done:
            continue
        done.add(item.union)
        branches = unions[item.union]
        inside = [b for b in branches if len(b.path) > len(item.union)]  # a branch took the value's shape
        if inside:
            # and of those, a branch that took the items' type too and found a value out of its range speaks for
            # the union (`prompt: [-1]`: "prompt.0: ... greater than or equal to 0", not also "a valid string")
            took = [b for b in inside if not _type_error(b.error)]
            out.extend(Problem(b.path, _message(b.error), _code(b.error)) for b in took or inside)
            continue
        custom = [b for b in branches if _code(b.error) != "invalid_request"]
        if custom:  # a branch's own check spoke: its message says more than the list of shapes
            out.append(Problem(custom[0].path, _message(custom[0].error), _code(custom[0].error)))
            continue
        if any(_message(b.error) == "must be a finite number" for b in branches):
            out.append(Problem(item.union, "must be a finite number"))
            continue
        accepted = list(dict.fromkeys(_describe(b.tag or "", b.error) for b in branches))
        words = accepted[0] if len(accepted) == 1 else ", ".join(accepted[:-1]) + f", or {accepted[-1]}"
        out.append(Problem(item.union, f"should be {words}"))
    return list(dict.fromkeys(out))


def not_found(errors: list[dict[str, Any]]) -> tuple[str, str, str] | None:
    """A path parameter that names a resource (`*_id`) and fails its pattern: no such resource, so a 404.

    Returns (code, message, param), e.g. ("batch_not_found", "no batch 'x'", "batch_id")."""
    for error in errors:
        loc = error.get("loc", ())
        if len(loc) == 2 and loc[0] == "path" and str(loc[1]).endswith("_id"):
            kind = str(loc[1]).removesuffix("_id")
            return f"{kind}_not_found", f"no {kind} {error.get('input')!r}", str(loc[1])
    return None
