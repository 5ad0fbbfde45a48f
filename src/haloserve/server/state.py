"""What the handlers of one app share (:class:`ServerState`) and the checks every request passes:
the API key, readiness, the model name."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from fastapi import Request

from haloserve.config.serve import ServeSettings
from haloserve.engine.base import Engine
from haloserve.engine.bridge import RequestStream
from haloserve.engine.chat_template import ChatTemplate
from haloserve.errors import ModelNotFoundError, ServiceUnavailableError
from haloserve.server.metrics import ServerMetrics
from haloserve.server.middleware import authenticate


@dataclass
class ServerState:
    """What the handlers of one app share."""

    settings: ServeSettings
    engine: Engine
    model_id: str
    metrics: ServerMetrics
    api_keys: list[bytes] = field(default_factory=list)
    template_source: str | None = None
    aliases: tuple[str, ...] = ()  # other names the model answers to (many models: docs/models.md)
    model_label: str | None = None  # the ``model`` label of the per-model metrics (many models only)
    template: ChatTemplate | None = None
    load_error: str | None = None
    # Shutdown (see server/shutdown.py): no new work once draining; the live streams get their end.
    draining: bool = False
    deadline_passed: bool = False
    streams: weakref.WeakSet[RequestStream] = field(default_factory=weakref.WeakSet)

    def check_model(self, requested: str) -> None:
        """404 ``model_not_found`` unless ``requested`` is ours (an empty model means the default)."""
        if requested and requested != self.model_id and requested not in self.aliases:
            raise ModelNotFoundError(
                f"The model `{requested}` does not exist; this server serves `{self.model_id}`", param="model"
            )

    def require_ready(self) -> None:
        """503 while the model loads (or failed to load), and once shutdown has begun."""
        if self.draining:
            raise ServiceUnavailableError("the server is shutting down", retry_after=5.0)
        if not self.engine.ready or self.template is None:
            # an engine that lost its compute (the child-process engine of --rpc) says why and reloads
            fault: str | None = getattr(self.engine, "fault", None)
            if fault:
                raise ServiceUnavailableError(fault, retry_after=2.0)
            why = (
                f"model failed to load: {self.load_error}"
                if self.load_error
                else "the model is still loading"
            )
            raise ServiceUnavailableError(why, retry_after=5.0)


def state_of(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request``."""
    state: ServerState = request.app.state.halo
    return state


def api_keys(settings: ServeSettings) -> list[bytes]:
    """The keys a request may present, as bytes for constant-time comparison."""
    return [k.encode() for k in settings.all_api_keys()]


def check_api_key(state: ServerState, request: Request) -> None:
    """401 in OpenAI shape unless a configured key is presented (the middleware checks first)."""
    h = request.headers
    authenticate(state.api_keys, h.get("authorization", ""), h.get("x-api-key", ""))


# Paths anyone may read: readiness for load balancers and the API description. /metrics joins them
# only with --no-metrics-auth; every other path (404s included) needs the key when keys are set.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def open_paths(settings: ServeSettings) -> frozenset[str]:
    """The paths served without an API key under ``settings``."""
    return OPEN_PATHS if settings.metrics_auth else OPEN_PATHS | {"/metrics"}
