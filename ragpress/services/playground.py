"""The playground: one static page at ``/playground`` that calls the service's own REST API.

A person pastes a question and passages (or leaves them out to retrieve from the index), picks
methods and a budget, and sees, per method, the kept spans highlighted in the source passages,
the tokens saved, and the reader's answers from the full and the compressed context. No build
step and no CDN: ``static/playground.{html,js,css}`` ship as package data.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

STATIC_DIR = Path(__file__).with_name("static")
ASSETS = {  # the only files served: no path from the URL ever reaches the filesystem
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
_NO_CACHE = {"Cache-Control": "no-cache"}


def mount_playground(app: FastAPI) -> None:
    """Add ``GET /playground`` (the page) and ``GET /playground/{asset}`` (its script and
    stylesheet) to ``app``; both are kept out of the OpenAPI schema."""

    @app.get("/playground", include_in_schema=False)
    async def playground_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "playground.html", media_type="text/html; charset=utf-8",
                            headers=_NO_CACHE)

    @app.get("/playground/{asset}", include_in_schema=False)
    async def playground_asset(asset: str) -> FileResponse:
        if asset not in ASSETS:
            raise HTTPException(404, f"no playground asset {asset!r}")
        return FileResponse(STATIC_DIR / asset, media_type=ASSETS[asset], headers=_NO_CACHE)
