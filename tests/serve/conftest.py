"""Real `halo serve` processes on loopback with the bundled model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.model


@pytest.fixture(scope="session")
def server() -> Iterator[RemoteServer]:
    """One shared server: 16 slots x 1024 tokens, two threads."""
    with RemoteServer(["--parallel", "16", "--ctx-size", "16384", "--threads", "2"]) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server: RemoteServer):  # type: ignore[no-untyped-def]
    """The official openai client pointed at the shared server."""
    return server.client()
