"""The status page of a many-models `halo serve` (--models-dir with the bundled model under two names):
each model with its state and a load/unload button that works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haloserve.testing.remote import RemoteServer
from tests.ui.conftest import wait_js

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    """Two models (the bundled one twice), loaded on demand."""
    root = tmp_path_factory.mktemp("ui-models")
    for name in ("tiny-a", "tiny-b"):
        (root / f"{name}.gguf").symlink_to(model_path)
    args = ["--models-dir", str(root), "--threads", "1", "--parallel", "1", "--ctx-size", "1024"]
    with RemoteServer(args) as srv:
        yield srv


def _state(p: Any, model: str) -> str:
    text: str = p.locator("#st-models tr", has_text=model).locator(".state").inner_text()
    return text


def test_load_and_unload_buttons(open_page: Any, server: RemoteServer) -> None:
    ui = open_page(server.url)
    p = ui.page
    p.goto("/ui/#status")
    wait_js(p, "document.querySelectorAll('#st-models tr').length === 3")
    assert _state(p, "tiny-a") == "unloaded" and _state(p, "tiny-b") == "unloaded"
    row = p.locator("#st-models tr", has_text="tiny-a")
    row.locator("button", has_text="load").click()
    wait_js(p, "[...document.querySelectorAll('#st-models tr')].some(r =>"
            " r.textContent.includes('tiny-a') && r.textContent.includes('loaded') &&"
            " !r.textContent.includes('unloaded'))")
    assert _state(p, "tiny-b") == "unloaded"
    wait_js(p, "document.getElementById('st-tiles').textContent.includes('1 / 2models loaded')")
    assert row.locator("button").inner_text() == "unload"
    ui.screenshot("models")
    row.locator("button").click()
    wait_js(p, "[...document.querySelectorAll('#st-models tr')].some(r =>"
            " r.textContent.includes('tiny-a') && r.textContent.includes('unloaded'))")
    assert ui.errors == []
