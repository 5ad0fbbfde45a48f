"""Fixtures of the adversarial tests: fake upstreams and real gateways in threads, closed after each test.

A test module may set ``HEALTH = (interval, timeout)`` for its gateways' probes (default 0.5 s, 5 s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from haloserve.config.gateway import GatewaySettings
from haloserve.testing.gateway import ThreadedGateway, gateway_in_thread
from haloserve.testing.upstream import FakeUpstream, serve_in_thread
from haloserve.testing.upstream_config import UpstreamConfig


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Everything a test starts, closed when it ends."""
    with ExitStack() as s:
        yield s


@pytest.fixture
def upstream(stack: ExitStack) -> Callable[..., FakeUpstream]:
    """Start a fake OpenAI upstream in a thread with the given ``UpstreamConfig`` fields."""

    def make(**cfg: Any) -> FakeUpstream:
        return stack.enter_context(serve_in_thread(UpstreamConfig(**cfg)))

    return make


@pytest.fixture
def gateway(
    stack: ExitStack, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., ThreadedGateway]:
    """Start a real gateway in a thread over the given backends, with settings overridden by ``kw``."""
    interval, timeout = getattr(request.module, "HEALTH", (0.5, 5.0))

    def make(backends: list[str], **kw: Any) -> ThreadedGateway:
        values: dict[str, Any] = {
            "port": 0,
            "backends": backends,
            "keys_db": tmp_path / "gateway.db",
            "health_interval": interval,
            "health_timeout": timeout,
            "access_log": False,
            **kw,
        }
        return stack.enter_context(gateway_in_thread(GatewaySettings(**values)))

    return make
