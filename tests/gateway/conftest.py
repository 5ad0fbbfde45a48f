"""Fixtures: fake upstreams in threads and a gateway in a thread, built per test (they are cheap)."""

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

MakeUpstream = Callable[..., FakeUpstream]
MakeGateway = Callable[..., ThreadedGateway]

# Stream, usage and quota tests run against both SSE line-end styles: LF as OpenAI and llama.cpp send
# them, CRLF as sse-starlette does ("\r\n\r\n" between events).
BOTH_LINE_ENDS = pytest.mark.parametrize("line_end", ["lf", "crlf"])


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Everything a test starts, stopped in reverse order at its end."""
    with ExitStack() as s:
        yield s


@pytest.fixture
def make_upstream(stack: ExitStack) -> MakeUpstream:
    """Start a fake upstream: ``make_upstream(models=["a"], ttft_ms=5)``."""

    def make(**cfg: Any) -> FakeUpstream:
        return stack.enter_context(serve_in_thread(UpstreamConfig(**cfg)))

    return make


@pytest.fixture
def make_gateway(stack: ExitStack, tmp_path: Path) -> MakeGateway:
    """Start a gateway on a free port with fast health checks: ``make_gateway([up.url], policy=...)``."""

    def make(backends: list[Any], config_path: Path | None = None, **kw: Any) -> ThreadedGateway:
        values: dict[str, Any] = {
            "port": 0,
            "backends": backends,
            "keys_db": tmp_path / "gateway.db",
            "health_interval": 0.2,
            "health_timeout": 1.0,
            "access_log": False,
            **kw,
        }
        settings = GatewaySettings(**values)
        # a reload re-reads the file under the same flags: everything given here except the backends
        flags = {k: v for k, v in values.items() if k != "backends"}
        return stack.enter_context(gateway_in_thread(settings, config_path=config_path, flags=flags))

    return make
