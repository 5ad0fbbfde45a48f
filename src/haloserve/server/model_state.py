"""What one model of many needs beside its engine: its :class:`ServerState`, and the placeholder engine of
the app-wide state (requests there always name a model)."""

from __future__ import annotations

from typing import Any

from haloserve.config.model_registry import ModelEntry
from haloserve.engine.base import Engine, EngineInfo, EngineStats, GenerationRequest
from haloserve.engine.bridge import RequestStream
from haloserve.engine.chat_template import CHATML, ChatTemplate
from haloserve.errors import ServiceUnavailableError
from haloserve.server.metrics import ServerMetrics
from haloserve.server.state import ServerState


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
