"""mount_ui: serves the web chat page at GET / and /ui, and its scripts and styles under /ui/static/.

The page is plain files (no build step, no CDN). It talks to this same server's /v1 API, so the only thing the
server tells it is where that API lives: the page's `{{BASE}}` placeholder becomes the app's root path, which keeps
the page working behind a proxy that mounts glmv under a prefix (`--root-path`).
"""

from __future__ import annotations

import html
import mimetypes
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

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

    # The assets are a fixed list read at mount time (no path from the URL ever reaches the file system). Plain
    # routes rather than a StaticFiles mount: they match with or without the --root-path prefix, like the API.
    assets = {f.name: mimetypes.guess_type(f.name)[0] or "application/octet-stream"
              for f in STATIC_DIR.iterdir() if f.is_file() and f.name != "index.html"}

    async def asset(name: str) -> Response:
        if name not in assets:
            return Response(status_code=404)
        return FileResponse(STATIC_DIR / name, media_type=assets[name],
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    # HEAD too: uptime checkers and `curl -I` probe the page that way (Starlette answers it without a body).
    app.add_api_route("/", page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/ui", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui/static/{name}", asset, methods=["GET"], include_in_schema=False)
