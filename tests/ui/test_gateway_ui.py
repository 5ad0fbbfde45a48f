"""The web UI on a real gateway (the Gateway class on loopback, a fake upstream behind it), in headless
chromium: keys made and revoked in the admin page work (and stop working) from the openai client, usage
shows up; markup in a model reply renders as text; the status page lists the backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from haloserve.config.gateway import GatewaySettings
from haloserve.testing.gateway import ThreadedGateway, gateway_in_thread
from haloserve.testing.upstream import serve_in_thread
from haloserve.testing.upstream_config import UpstreamConfig
from tests.ui.conftest import paste_key, wait_js

pytestmark = pytest.mark.slow

ADMIN = "ui-admin-key-0123456789"
# What the fake model says: markup that must stay text, and Markdown that must render.
MARKUP = ["<script>window.__pwned = 1</script>", ' <img src=x onerror="window.__pwned = 2">', " **bold**"]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[ThreadedGateway]:
    """A gateway needing keys, with the admin API on, in front of a fake upstream that says MARKUP."""
    with serve_in_thread(UpstreamConfig(models=["fake-model"], words=MARKUP, itl_ms=20)) as up:
        settings = GatewaySettings(
            port=0,
            backends=[up.url],
            keys_db=tmp_path / "gateway.db",
            health_interval=0.5,
            health_timeout=1.0,
            access_log=False,
            require_keys=True,
            admin_key=ADMIN,
        )
        with gateway_in_thread(settings) as gw:
            yield gw


def _open(open_page: Any, gw: ThreadedGateway, hash_: str) -> Any:
    ui = open_page(gw.url)
    ui.page.goto("/ui/" + hash_)
    ui.page.wait_for_selector("body[data-ready='1']")
    assert ui.page.locator("#server-kind").inner_text() == "halo gateway"
    return ui


def test_admin_page_creates_a_key_that_works_then_revokes_it(
    open_page: Any, gateway: ThreadedGateway
) -> None:
    ui = _open(open_page, gateway, "#admin")
    p = ui.page
    assert p.is_visible("#nav-admin")
    wait_js(p, "document.getElementById('ad-error').textContent.includes('admin key')")
    paste_key(p, "#admin-key", "wrong-admin-key")
    wait_js(p, "document.getElementById('ad-error').textContent.includes('401')")
    paste_key(p, "#admin-key", ADMIN)
    p.fill("#ad-name", "team-ui")
    p.fill("#ad-rpm", "600")
    p.fill("#ad-tpm", "200000")
    p.click("#ad-create button[type=submit]")
    p.wait_for_selector("#ad-secret:not([hidden])")
    secret = p.locator("#ad-secret-value").inner_text().strip()
    assert secret.startswith("halo-")
    wait_js(p, "document.getElementById('ad-keys').textContent.includes('team-ui')")
    assert secret not in p.locator("#ad-keys").inner_text()  # the list shows a hint, never the key
    ui.screenshot("admin-new-key")
    p.click("#ad-secret-done")
    assert secret not in p.content()  # shown once: gone from the page
    assert p.evaluate("window.localStorage.length") == 0
    assert secret not in p.evaluate("JSON.stringify(window.sessionStorage)")

    client = gateway.client(api_key=secret)
    reply = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=6
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    with pytest.raises(openai.AuthenticationError):
        gateway.client(api_key="halo-not-a-key").models.list()

    p.click("#ad-refresh")
    wait_js(p, "document.getElementById('ad-usage').textContent.includes('team-ui')")
    usage = p.locator("#ad-usage tr", has_text="team-ui").inner_text()
    assert "fake-model" in usage and "\t6\t" in usage  # 6 completion tokens
    assert p.evaluate("document.getElementById('ad-chart').dataset.bars") == "1"
    ui.screenshot("admin")

    p.once("dialog", lambda d: d.accept())
    p.locator("#ad-keys tr", has_text="team-ui").locator("button").click()
    wait_js(p, "document.querySelector('#ad-keys').textContent.includes('revoked')")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    assert ui.errors == []


def test_markup_from_the_model_renders_as_text(open_page: Any, gateway: ThreadedGateway) -> None:
    made = httpx.post(
        gateway.url + "/admin/keys", json={"name": "ui"}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    key = made.json()["key"]
    ui = _open(open_page, gateway, "")
    p = ui.page
    paste_key(p, "#api-key", key)
    wait_js(p, "document.querySelectorAll('#pg-model option').length > 0")
    p.fill("#pg-max", "6")
    p.fill("#pg-input", "Say something with markup.")
    p.click("#pg-send")
    p.wait_for_selector(".msg.assistant[data-state='done']")
    body = p.locator(".msg.assistant .body").last
    text = body.inner_text()
    assert "<script>window.__pwned = 1</script>" in text
    assert '<img src=x onerror="window.__pwned = 2">' in text
    assert body.locator("script, img").count() == 0
    assert body.locator("strong").all_inner_texts() == ["bold", "bold"]  # Markdown still renders
    assert p.evaluate("window.__pwned") is None
    ui.screenshot("markup-as-text")
    assert ui.errors == []


def test_gateway_status_lists_backends(open_page: Any, gateway: ThreadedGateway) -> None:
    made = httpx.post(
        gateway.url + "/admin/keys", json={"name": "ops"}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    key = made.json()["key"]
    page = httpx.get(gateway.url + "/", headers={"Accept": "text/html"})
    assert page.status_code == 307 and page.headers["location"] == "/ui/"
    assert httpx.get(gateway.url + "/").status_code == 404  # API clients on / unchanged
    ui_page = httpx.get(gateway.url + "/ui/")
    assert "frame-ancestors 'none'" in ui_page.headers["content-security-policy"]
    assert ui_page.headers["x-content-type-options"] == "nosniff"
    ui = _open(open_page, gateway, "#status")
    p = ui.page
    paste_key(p, "#api-key", key)
    wait_js(p, "document.querySelector('#st-backends td') !== null")
    row = p.locator("#st-backends tr").nth(1).inner_text()
    assert "healthy" in row and "closed" in row and "fake-model (loaded)" in row
    client = gateway.client(api_key=key)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        wait_js(
            p,
            "Number(document.getElementById('st-c3').dataset.points) >= 3"
            " && Number(document.getElementById('st-c3').dataset.last) > 0",
        )
    finally:
        stop.set()
        worker.join(30)
    ui.screenshot("gateway-status")
    assert ui.errors == []
