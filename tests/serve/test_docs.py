"""docs/serve.md: its examples run against a real server, and its options table is current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from haloserve.config.docs import table_for
from haloserve.testing.remote import RemoteServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "serve.md"
BLOCK = re.compile(r"<!-- test: serve -->\n```python\n(.*?)```", re.S)


def test_options_table_is_generated_from_the_settings() -> None:
    text = DOC.read_text()
    current = text.split("<!-- options:serve:start -->\n", 1)[1].split("\n<!-- options:serve:end -->", 1)[0]
    assert current == table_for("serve"), "regenerate with: python -m haloserve.config.docs serve"


@pytest.mark.model
def test_examples_run(server: RemoteServer) -> None:
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 3
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"BASE_URL": server.base_url})
