"""Fixtures of the many-models tests: fake-engine managers (fast layer) and synthetic GGUFs (model layer)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from haloserve.config.model_registry import ModelEntry
from haloserve.config.serve import ServeSettings
from haloserve.engine.fake import FakeEngine
from haloserve.server.models import ModelManager


@dataclass
class FakeFleet:
    """A manager over fake engines: each model's planned bytes, load delay and failure are set here, and
    every engine made is recorded."""

    sizes: dict[str, int]
    budget: int = 100
    delay: dict[str, float] = field(default_factory=dict)
    error: dict[str, str] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)

    def entry(self, name: str, **kw: object) -> ModelEntry:
        """One entry with fake-engine settings."""
        settings = ServeSettings(engine="fake", parallel=2, fake_itl=0.01)
        return ModelEntry(name, Path(f"/models/{name}.gguf"), settings, **kw)  # type: ignore[arg-type]

    def make(self, entry: ModelEntry) -> FakeEngine:
        """The engine factory the manager calls."""
        self.made.append(entry.id)
        return FakeEngine(
            entry.settings,
            str(entry.path),
            start_delay=self.delay.get(entry.id, 0.0),
            start_error=self.error.get(entry.id),
        )

    def manager(self, entries: list[ModelEntry] | None = None, **kw: object) -> ModelManager:
        """A manager of ``entries`` (default: one plain entry per size)."""
        entries = entries if entries is not None else [self.entry(n) for n in self.sizes]
        mgr = ModelManager(
            entries,
            budget=self.budget,
            make_engine=self.make,
            need_bytes=lambda e: self.sizes[e.id],
            **kw,  # type: ignore[arg-type]
        )
        mgr.measure()
        return mgr


@pytest.fixture
def fleet() -> Callable[..., FakeFleet]:
    """``fleet(a=40, b=40, budget=100)``: a :class:`FakeFleet`."""

    def make(budget: int = 100, **sizes: int) -> FakeFleet:
        return FakeFleet(sizes=sizes, budget=budget)

    return make


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small synthetic models (distinct shapes and weights) and the bundled one, in one directory."""
    from haloserve.bundled import bundled_model_path
    from haloserve.testing.synth_gguf import write_gguf

    root = tmp_path_factory.mktemp("models")
    os.symlink(bundled_model_path(), root / "smol.gguf")
    write_gguf(root / "tiny-a.gguf", shape="tiny", seed=1, name="tiny-a")
    write_gguf(root / "tiny-b.gguf", shape="tiny", seed=2, name="tiny-b", n_layer=3)
    return root
