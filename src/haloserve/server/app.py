"""``create_app(settings, engine)``: the HTTP app of one node, with no global state.

The model loads in a worker thread after the app starts, so ``/health`` answers 503 while loading and
200 once ready. What the handlers share lives on ``app.state.halo`` (a
:class:`~haloserve.server.state.ServerState`); each endpoint has its serving object on ``app.state``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from haloserve import __version__
from haloserve.config.serve import ServeSettings
from haloserve.engine.base import Engine
from haloserve.engine.chat_template import CHATML, ChatTemplate
from haloserve.errors import ConfigError
from haloserve.server.chat.serving import ChatServing
from haloserve.server.completion import CompletionServing
from haloserve.server.errors import install_error_handlers
from haloserve.server.metrics import ServerMetrics
from haloserve.server.middleware import RequestContext
from haloserve.server.model_metrics import ModelCollector
from haloserve.server.model_routes import router as models_router
from haloserve.server.model_state import NoEngine
from haloserve.server.models import ModelManager
from haloserve.server.openai_routes import router as openai_router
from haloserve.server.ops_routes import router as ops_router
from haloserve.server.shutdown import begin_shutdown
from haloserve.server.state import ServerState, api_keys, open_paths
from haloserve.server.tokens import TokenServing

log = logging.getLogger("haloserve.server")


def model_alias(path: str | Path) -> str:
    """The default model id: the file name without ``.gguf`` and without a split suffix."""
    name = Path(path).name
    if name.lower().endswith(".gguf"):
        name = name[:-5]
    return re.sub(r"-\d{5}-of-\d{5}$", "", name)


def create_app(
    settings: ServeSettings,
    engine: Engine,
    *,
    model_id: str | None = None,
    on_load_error: Callable[[str], None] | None = None,
    on_ready: Callable[[ServerState], None] | None = None,
) -> FastAPI:
    """A fresh app serving ``engine``; the engine starts in the app's lifespan."""
    template_source: str | None = None
    if settings.chat_template is not None:
        try:
            template_source = settings.chat_template.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"--chat-template: cannot read {settings.chat_template}: {exc.strerror}"
            ) from None
        ChatTemplate(template_source)  # compile now: a broken template is a start-up error
    alias = model_id or settings.model_alias or model_alias(engine_path(settings))

    async def load(state: ServerState) -> None:
        try:
            await asyncio.to_thread(engine.start)
            tok = engine.tokenizer
            source = state.template_source or engine.chat_template or CHATML
            state.template = ChatTemplate(source, bos_token=tok.bos_text, eos_token=tok.eos_text)
        except Exception as exc:  # reported, never raised into the event loop
            state.load_error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", state.load_error)
            if on_load_error is not None:
                on_load_error(state.load_error)
            return
        if on_ready is not None:
            on_ready(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServerState = app.state.halo
        task = asyncio.create_task(load(state))
        try:
            yield
        finally:
            if not task.done():
                await asyncio.shield(task)
            await asyncio.to_thread(engine.stop, max(1.0, settings.shutdown_timeout))

    app = FastAPI(
        title="haloserve",
        version=__version__,
        description="OpenAI-compatible API of one haloserve node.",
        lifespan=lifespan,
    )
    state = ServerState(
        settings=settings,
        engine=engine,
        model_id=alias,
        metrics=ServerMetrics(engine.stats, lambda: engine.info if engine.ready else None),
        api_keys=api_keys(settings),
        template_source=template_source,
    )
    app.state.halo = state
    app.state.models = None
    # One serving object per endpoint; the routes validate, call it, and serialise what it returns.
    app.state.chat_serving = ChatServing(state)
    app.state.completion_serving = CompletionServing(state)
    app.state.token_serving = TokenServing(state)
    _assemble(app, settings, state)
    return app


def create_models_app(
    settings: ServeSettings, models: ModelManager, *, on_ready: Callable[[ServerState], None] | None = None
) -> FastAPI:
    """A fresh app serving the models of ``models`` on demand, each with its own engine (docs/models.md)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await models.start()
        if on_ready is not None:
            on_ready(app.state.halo)
        try:
            yield
        finally:
            await models.close()

    app = FastAPI(
        title="haloserve",
        version=__version__,
        description="OpenAI-compatible API of one haloserve node serving several models.",
        lifespan=lifespan,
    )
    models.api_keys = api_keys(settings)  # the per-model states check the same keys
    state = ServerState(
        settings=settings, engine=NoEngine(), model_id="", metrics=models.metrics, api_keys=models.api_keys
    )
    models.metrics.registry.register(ModelCollector(models))
    app.state.halo = state
    app.state.models = models
    _assemble(app, settings, state)
    return app


def begin_app_shutdown(app: FastAPI, timeout: float) -> None:
    """Start draining the app (event-loop thread): with many models, no more loads, and every loaded
    model's requests end as one model's do (server/shutdown.py)."""
    models: ModelManager | None = app.state.models
    if models is not None:
        models.draining = True
    for state in [app.state.halo, *(models.states() if models is not None else [])]:
        begin_shutdown(state, timeout)


def _assemble(app: FastAPI, settings: ServeSettings, state: ServerState) -> None:
    install_error_handlers(app)
    app.include_router(ops_router)
    app.include_router(models_router)
    app.include_router(openai_router)
    if settings.cors_origin:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id", "X-Api-Key"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    app.add_middleware(
        RequestContext,
        max_body=settings.max_body_bytes,
        api_keys=state.api_keys,
        open_paths=open_paths(settings),
    )


def engine_path(settings: ServeSettings) -> str:
    """The model path the settings point at (the bundled model when none)."""
    if settings.model is not None:
        return str(settings.model)
    if settings.engine == "fake":
        return "fake-model.gguf"
    from haloserve.bundled import BUNDLED_ALIAS

    return BUNDLED_ALIAS
