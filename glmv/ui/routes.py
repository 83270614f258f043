"""mount_ui: serves the web chat page at GET / and /ui, and its assets under /ui/static/.

The page is plain files (no build step, no CDN). It talks to this same server's /v1 API, so the only thing the
server tells it is where that API lives: the page's `{{BASE}}` placeholder becomes the app's root path, which keeps
the page working behind a proxy that mounts glmv under a prefix (`--root-path`).
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")

# The page runs no inline script and loads nothing from elsewhere; this keeps it that way even if model text ever
# slipped past the renderer's escaping. data:/blob: are needed for attachment previews.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)


def _page_html(root_path: str) -> str:
    base = root_path.rstrip("/") + "/"
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8").replace("{{BASE}}", html.escape(base, quote=True))


def mount_ui(app: FastAPI) -> None:
    """Add the page routes to `app` (kept out of the OpenAPI schema: they are not part of the API)."""

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(
            _page_html(request.scope.get("root_path", "")),
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP,
                     "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"},
        )

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui", page, methods=["GET"], include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="glmv-ui-static")
