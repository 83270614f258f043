"""GET /docs: the API reference as one self-contained HTML page, drawn from the app's own OpenAPI schema.

FastAPI's Swagger and ReDoc pages load their scripts from a CDN, so a server on a machine without internet (the
usual place for a GPU box) showed a blank /docs. This page is rendered on the server from /openapi.json, with no
script and no outside asset, so it reads the same offline; /openapi.json stays for tools.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

_STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:0 auto;padding:1rem;color:#1d1d1f}
h2{border-top:1px solid #ddd;padding-top:1rem}code{background:#f2f2f2;padding:0 .25em;border-radius:3px}
.m{display:inline-block;min-width:3.5em;font-weight:600}table{border-collapse:collapse;width:100%;font-size:14px}
td,th{border-bottom:1px solid #eee;text-align:left;padding:.25rem .5rem;vertical-align:top}
@media (prefers-color-scheme:dark){body{background:#111;color:#ddd}code{background:#222}td,th{border-color:#333}}"""


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type_of(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_type_of(schema.get('items', {}))}"
    return str(schema.get("type", "any"))


def _fields(name: str, components: dict[str, Any]) -> str:
    schema = components.get(name, {})
    rows = []
    required = set(schema.get("required", []))
    for field, spec in schema.get("properties", {}).items():
        desc = spec.get("description", "")
        rows.append(f"<tr><td><code>{html.escape(field)}</code>{' (required)' if field in required else ''}</td>"
                    f"<td>{html.escape(_type_of(spec))}</td><td>{html.escape(desc)}</td></tr>")
    if not rows:
        return ""
    return f"<table><tr><th>{html.escape(name)} field</th><th>type</th><th>about</th></tr>{''.join(rows)}</table>"


def render_docs(spec: dict[str, Any]) -> str:
    components = spec.get("components", {}).get("schemas", {})
    info = spec.get("info", {})
    parts = [f"<h1>{html.escape(info.get('title', 'API'))} {html.escape(info.get('version', ''))}</h1>",
             f"<p>{html.escape(info.get('description', ''))}</p>",
             '<p>Machine-readable: <a href="openapi.json">openapi.json</a>.</p>']
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            parts.append(f"<h2><span class=m>{method.upper()}</span> <code>{html.escape(path)}</code></h2>")
            parts.append(f"<p>{html.escape(op.get('summary', ''))}</p>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "$ref" in body:
                parts.append(_fields(_type_of(body), components))
            codes = ", ".join(f"{code} {html.escape(r.get('description', ''))}"
                              for code, r in op.get("responses", {}).items())
            parts.append(f"<p>Answers: {codes}</p>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>{html.escape(info.get('title', 'API'))} API"
            f"</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")


def mount_docs(app: FastAPI) -> None:
    """Serve /docs from app.openapi() (create the app with docs_url=None, redoc_url=None)."""

    async def docs(_: Request) -> HTMLResponse:
        return HTMLResponse(render_docs(app.openapi()), headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
