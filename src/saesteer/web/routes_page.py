"""The page itself: ``index.html``, ``app.js`` and the shared stylesheet (no CDN, no build step)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response

from saesteer.evaluation.templating import stylesheet

STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}

router = APIRouter(include_in_schema=False)


@cache
def static_files() -> dict[str, bytes]:
    """The page's files, read once from the package."""
    root = resources.files("saesteer.web") / "static"
    files = {name: (root / name).read_bytes() for name in ("index.html", "app.js")}
    files["style.css"] = stylesheet().encode("utf-8")
    return files


@router.get("/")
async def index():
    return HTMLResponse(static_files()["index.html"], headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}")
async def static(name: str):
    if name not in STATIC:  # a fixed set of names, never a path
        return JSONResponse({"detail": "not found"}, status_code=404)
    return Response(static_files()[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})
