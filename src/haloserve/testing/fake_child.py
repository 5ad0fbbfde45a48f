"""A :class:`~haloserve.engine.child.ChildSpec` over the fake backend, for tests of the child-process
engine without a model or RPC workers: a file stands for a worker being down."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haloserve.config.serve import ServeSettings
from haloserve.engine.backend import Backend, Span
from haloserve.engine.chat_template import CHATML
from haloserve.engine.fake_backend import FakeBackend


class SlowBackend(FakeBackend):
    """The fake backend with each decode taking ``delay`` seconds (a stream lasts long enough to be cut)."""

    def __init__(self, delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    def decode(self, spans: Sequence[Span]) -> int:
        """Wait, then decode as the fake does."""
        time.sleep(self.delay)
        return super().decode(spans)


@dataclass(frozen=True)
class FakeSpec:
    """The fake backend in the child; ``down`` is a file whose existence means "worker fake:1 is down"."""

    settings: ServeSettings
    down: Path | None = None
    delay: float = 0.0
    fail_load: Path | None = None  # while this file exists, loading fails (a reload that does not work)

    def vocab(self) -> tuple[Any, str | None]:
        """The fake backend tokenises bytes; its template is ChatML."""
        return FakeBackend(parallel=self.settings.parallel), CHATML

    def backend(self) -> Backend:
        """A fresh fake backend (slowed down when ``delay`` is set)."""
        if self.fail_load is not None and self.fail_load.exists():
            raise RuntimeError("injected load failure")
        return SlowBackend(self.delay, parallel=self.settings.parallel, n_ctx=2048)

    def unreachable(self, *, handshake: bool) -> list[str]:
        """``RPC worker fake:1: down`` while the ``down`` file exists."""
        return ["RPC worker fake:1: down"] if self.down is not None and self.down.exists() else []
