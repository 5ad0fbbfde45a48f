"""The UI's JavaScript modules (SSE parser, Markdown renderer, Prometheus parser, chart helpers), unit-
tested in headless chromium: tests/ui/unit.js runs in a page served from /ui, importing the shipped files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from haloserve.config.serve import ServeSettings
from haloserve.engine.fake import FakeEngine
from haloserve.server.app import create_app
from haloserve.testing.inproc import InProcessServer

pytestmark = pytest.mark.slow

UNIT_JS = Path(__file__).with_name("unit.js")


def test_js_units_pass_in_chromium(open_page: Any) -> None:
    settings = ServeSettings(engine="fake")
    with InProcessServer(create_app(settings, FakeEngine(settings))) as srv:
        page = open_page(srv.url)
        page.page.goto("/ui/")
        result = page.page.evaluate(UNIT_JS.read_text())
    assert result["failures"] == [], "\n".join(result["failures"])
    assert result["passed"] > 200  # the SSE cases run every split point of three streams
    assert page.errors == []


def test_ui_files_carry_a_strict_csp_and_root_redirects_only_browsers() -> None:
    settings = ServeSettings(engine="fake", api_key=["k1"])
    with InProcessServer(create_app(settings, FakeEngine(settings))) as srv:
        page = httpx.get(srv.url + "/ui/", headers={"Accept-Encoding": "gzip"})
        assert page.status_code == 200  # the static files need no key: they hold no data
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["content-encoding"] == "gzip" and "<title>haloserve</title>" in page.text
        js = httpx.get(srv.url + "/ui/js/app.js", headers={"Accept-Encoding": "identity"})
        assert js.headers["content-type"].startswith("text/javascript")
        assert "content-encoding" not in js.headers
        assert httpx.get(srv.url + "/ui/js/%2e%2e/%2e%2e/app.py").status_code == 404  # no way out
        assert httpx.get(srv.url + "/ui/.hidden.js").status_code == 404
        browser = httpx.get(srv.url + "/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert browser.status_code == 307 and browser.headers["location"] == "/ui/"
        api = httpx.get(srv.url + "/", headers={"Accept": "application/json"})
        assert api.status_code == 401  # an API client on / is judged as before: key first
        assert httpx.get(srv.url + "/v1/models").status_code == 401  # the API the UI calls keeps its key
    off = ServeSettings(engine="fake", ui=False)
    with InProcessServer(create_app(off, FakeEngine(off))) as srv:
        assert httpx.get(srv.url + "/ui/").status_code == 404
        assert httpx.get(srv.url + "/", headers={"Accept": "text/html"}).status_code == 404
