"""Fixtures for halo bench: the fake upstream in a thread or a child process, and a bench runner."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from haloserve.bench.preflight import run_sync
from haloserve.bench.runner import Runner
from haloserve.bench.schema import BenchResult
from haloserve.config.bench import BenchSettings
from haloserve.testing.upstream import FakeUpstream, serve_in_thread
from haloserve.testing.upstream_config import UpstreamConfig


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A fast fake upstream (no delays) on a free loopback port, in a thread."""
    with serve_in_thread(UpstreamConfig()) as up:
        yield up


def bench(url: str, **kw: Any) -> BenchResult:
    """Run halo bench's load generator against ``url`` with small defaults."""
    defaults: dict[str, Any] = {"input_len": 16, "output_len": 8, "warmup": 0, "progress": False}
    settings = BenchSettings(url=url, **{**defaults, **kw}).checked()
    return run_sync(Runner(settings).run())
