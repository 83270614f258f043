"""mount_ui without a browser: the page, its assets, its headers, and the API base behind --root-path."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from glmv.ui.routes import mount_ui


@pytest.mark.parametrize("root_path, base", [("", "/"), ("/glmv", "/glmv/"), ("/a/b", "/a/b/")])
def test_page_and_assets(root_path, base):
    app = FastAPI(root_path=root_path)  # as glmv.server.app.create_app does for --root-path
    mount_ui(app)
    client = TestClient(app)
    for path in ("/", "/ui"):
        resp = client.get(path)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        assert f'data-base="{base}"' in resp.text
        assert f'src="{base}ui/static/app.js"' in resp.text and "{{BASE}}" not in resp.text
        assert "script-src 'self'" in resp.headers["content-security-policy"]
    prefix = root_path.rstrip("/")
    for asset, kind in (("app.js", "javascript"), ("markdown.js", "javascript"), ("style.css", "text/css")):
        for path in {f"/ui/static/{asset}", f"{prefix}/ui/static/{asset}"}:  # behind a proxy that strips or not
            resp = client.get(path)
            assert resp.status_code == 200 and kind in resp.headers["content-type"], path
    for bad in ("/ui/static/missing.js", "/ui/static/index.html", "/ui/static/..%2Froutes.py"):
        assert client.get(bad).status_code == 404, bad
    assert not any(r.path in ("/", "/ui") for r in app.routes if getattr(r, "include_in_schema", False))


def test_page_has_no_inline_script_or_remote_resource():
    from glmv.ui.routes import STATIC_DIR

    html = (STATIC_DIR / "index.html").read_text()
    assert "<script>" not in html and "onclick" not in html  # the CSP forbids inline script anyway
    for name in ("index.html", "app.js", "markdown.js", "style.css"):
        text = (STATIC_DIR / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text.replace(
            "https://example.com", ""), name
