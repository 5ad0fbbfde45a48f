"""docs/tools.md: its examples run against the shared tools server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.model

DOC = Path(__file__).resolve().parents[2] / "docs" / "tools.md"
BLOCK = re.compile(r"<!-- test: tools -->\n```python\n(.*?)```", re.S)


def test_examples_run(tools_server: RemoteServer) -> None:
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 5
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"BASE_URL": tools_server.base_url})
