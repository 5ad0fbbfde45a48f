"""Headless chromium (Debian's, driven by Playwright) for the web UI tests, and the screenshots' folder.

The browser is not downloaded: it is the system's ``chromium`` (``.ci/run`` installs Debian's package
when it is missing). Without it the UI tests fail with a message saying so; they are never skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
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
        """Save ``docs/img/ui-NAME.png`` (the docs show these)."""
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
