"""Headless chromium (Debian's, driven by Playwright) for the web UI tests, and the screenshots' folder.

The browser is not downloaded: it is the system's ``chromium`` (``.ci/run`` installs Debian's package
when it is missing). Without it the UI tests fail with a message saying so; they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The docs' screenshots are rewritten only on request (HALO_UPDATE_SCREENSHOTS=1), so a test run never
# dirties the checkout; otherwise they are still taken, into a temporary folder.
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "img"
    if os.environ.get("HALO_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "haloserve-ui-screenshots"
)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    """The system's chromium binary (``HALO_CHROMIUM`` wins), or a test failure saying how to get one."""
    explicit = os.environ.get("HALO_CHROMIUM")
    if explicit:
        return explicit
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "the web UI tests need a chromium browser: apt-get install -y --no-install-recommends chromium"
        " (or set HALO_CHROMIUM to its path); .ci/run installs it",
        pytrace=False,
    )


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One headless chromium for the UI tests of this package."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh browser page that records script errors and CSP violations (tests assert none)."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        # HTTP errors the UI handles (a 401 before the key is pasted) are logged by chromium as
        # "Failed to load resource"; the tests assert those statuses themselves.
        if "Content Security Policy" in msg.text or (
            msg.type == "error" and "Failed to load resource" not in msg.text
        ):
            self.errors.append(f"console {msg.type}: {msg.text}")

    def screenshot(self, name: str) -> Path:
        """Save ``ui-NAME.png`` (into docs/img with HALO_UPDATE_SCREENSHOTS=1: the docs show these)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"ui-{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        """Close the page's context."""
        self.context.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """``open_page(base_url)`` -> a :class:`Page`; closed after the test."""
    pages: list[Page] = []

    def make(base_url: str) -> Page:
        p = Page(browser, base_url)
        pages.append(p)
        return p

    yield make
    for p in pages:
        p.close()


def paste_key(page: Any, selector: str, key: str) -> None:
    """Type a key into a key field the way a user pastes it (the page reacts on ``change``)."""
    page.fill(selector, key)
    page.dispatch_event(selector, "change")


def metric(url: str, name: str, key: str | None = None) -> float:
    """The sum of the samples of ``name`` (labels given in ``name`` must match) on ``url``/metrics."""
    import re

    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    text = httpx.get(url + "/metrics", headers=headers, timeout=10).text
    base, _, labels = name.partition("{")
    want = [p for p in labels.rstrip("}").split(",") if p]
    total = 0.0
    for m in re.finditer(rf"^{re.escape(base)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if all(w in (m.group(1) or "") for w in want):
            total += float(m.group(2))
    return total


def wait_js(page: Any, expression: str, timeout: float = 60.0) -> Any:
    """Poll ``expression`` (a JS expression) in the page until it is truthy; its value.

    Playwright's wait_for_function evaluates a string with eval(), which the UI's CSP forbids (as it
    should): evaluate() of a function is allowed, so poll with that.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(f"() => ({expression})")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for: {expression}")
        time.sleep(0.1)
