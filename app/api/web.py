"""GET /: the research page (plain HTML, CSS and JS, no build step); GET /web/{path}: its scripts, styles and the
vendored plotting library (uPlot), served from the package so the page needs no network; GET /favicon.ico."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from app.platform.errors import ApiError

router = APIRouter(tags=["web"])

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CACHE = "public, max-age=3600"
# The page runs only its own files: no inline script or style, no eval, nothing from elsewhere, never in a frame
# (every answer also carries nosniff and X-Frame-Options: app/platform/observe.py). Blob URLs are its downloads.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _walk(folder: Traversable, prefix: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for entry in folder.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            found.update(_walk(entry, f"{name}/"))
        elif any(name.endswith(suffix) for suffix in MEDIA_TYPES):
            found[name] = entry.read_bytes()
    return found


@lru_cache(maxsize=1)
def assets() -> dict[str, bytes]:
    """Every servable file under app/web, by its path there: only these names are ever answered."""
    return _walk(files("app").joinpath("web"), "")


def _asset(path: str) -> Response:
    body = assets().get(path)
    if body is None:
        raise ApiError(404, "not_found", f"no page asset {path!r}", "path")
    media_type = next(t for suffix, t in MEDIA_TYPES.items() if path.endswith(suffix))
    return Response(body, media_type=media_type, headers={"Cache-Control": CACHE, "Content-Security-Policy": CSP})


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(assets()["index.html"], headers={"Content-Security-Policy": CSP})


@router.get("/web/{path:path}", include_in_schema=False)
async def asset(path: str) -> Response:
    return _asset(path)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return _asset("favicon.svg")
