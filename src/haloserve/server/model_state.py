"""One model of many: its lifecycle record (:class:`ManagedModel`), its :class:`ServerState`, and the
placeholder engine of the app-wide state (requests there always name a model)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from haloserve.config.model_registry import ModelEntry
from haloserve.engine.base import Engine, EngineInfo, EngineStats, GenerationRequest
from haloserve.engine.bridge import RequestStream
from haloserve.engine.chat_template import CHATML, ChatTemplate
from haloserve.errors import ServiceUnavailableError
from haloserve.server.metrics import ServerMetrics
from haloserve.server.state import ServerState


@dataclass(eq=False)
class ManagedModel:
    """One known model: its entry, lifecycle status, engine and serving objects once loaded."""

    entry: ModelEntry
    status: str = "unloaded"  # loaded | loading | unloaded | failed | unloading (shown as unloaded)
    need_bytes: int | None = None
    error: str | None = None
    engine: Engine | None = None
    state: ServerState | None = None
    servings: dict[str, Any] = field(default_factory=dict)
    reserved: bool = False  # its bytes count against the budget (loading or loaded)
    leases: int = 0
    last_used: float | None = None  # wall clock, for display
    last_used_mono: float = 0.0
    task: asyncio.Task[None] | None = None
    failed_at: float = 0.0
    refusal: ServiceUnavailableError | None = None  # why the last load attempt could not start (busy)
    loads: int = 0
    unloads: int = 0
    load_failures: int = 0
    load_seconds: float = 0.0

    @property
    def id(self) -> str:
        """The model id."""
        return self.entry.id

    def in_flight(self) -> bool:
        """True while a request holds the model or its engine runs or queues work."""
        if self.leases:
            return True
        if self.engine is None or not self.engine.ready:
            return False
        st = self.engine.stats()
        return bool(st.busy_slots or st.queue_depth)

    def touch(self) -> None:
        """Mark the model used now (least-recently-used order)."""
        self.last_used_mono = time.monotonic()
        self.last_used = time.time()


def model_state(entry: ModelEntry, engine: Engine, metrics: ServerMetrics, keys: list[bytes]) -> ServerState:
    """The per-model :class:`ServerState` of a started engine (its chat template built from the GGUF)."""
    tok = engine.tokenizer
    source = entry.template_source or engine.chat_template or CHATML
    return ServerState(
        settings=entry.settings,
        engine=engine,
        model_id=entry.id,
        metrics=metrics,
        api_keys=keys,
        template_source=entry.template_source,
        template=ChatTemplate(source, bos_token=tok.bos_text, eos_token=tok.eos_text),
        aliases=entry.aliases,
        model_label=entry.id,
    )


class NoEngine:
    """The app-wide state's engine when many models are served: each request goes to its model's own."""

    ready = False
    chat_template = None

    @property
    def info(self) -> EngineInfo:
        """Never: requests name a model."""
        raise ServiceUnavailableError("this server serves several models: name one", retry_after=1.0)

    @property
    def tokenizer(self) -> Any:
        """Never: requests name a model."""
        raise ServiceUnavailableError("this server serves several models: name one", retry_after=1.0)

    def start(self) -> None:
        """Nothing to start."""

    def stop(self, timeout: float = 10.0) -> None:
        """Nothing to stop."""

    def generate(self, request: GenerationRequest) -> RequestStream:
        """Never: requests name a model."""
        raise ServiceUnavailableError("this server serves several models: name one", retry_after=1.0)

    def stats(self) -> EngineStats:
        """Nothing runs here."""
        return EngineStats()
