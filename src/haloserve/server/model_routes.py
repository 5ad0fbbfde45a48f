"""The model lifecycle API (llama-server router mode's names and shapes): ``GET /models``,
``POST /models/load``, ``POST /models/unload``; the model cards of ``/v1/models``; which serving object a
request goes to; and the per-model metrics of the :class:`ModelManager` (docs/models.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from haloserve.config.serve import ServeSettings
from haloserve.errors import InvalidRequestError
from haloserve.protocol.models import model_card, model_list
from haloserve.server.model_state import ManagedModel
from haloserve.server.models import ModelManager
from haloserve.server.state import ServerState, check_api_key, state_of

router = APIRouter()

CARD_SETTINGS = ("ctx_size", "parallel", "cache_type_k", "cache_type_v", "n_gpu_layers", "flash_attn")
SHOWN_STATUS = {"unloading": "unloaded"}


def manager_of(request: Request) -> ModelManager | None:
    """The app's model manager (None when it serves one ``--model``)."""
    models: ModelManager | None = getattr(request.app.state, "models", None)
    return models


def card_settings(settings: ServeSettings, path: str) -> dict[str, Any]:
    """The settings a model card shows."""
    out: dict[str, Any] = {"path": path}
    out.update({k: getattr(settings, k) for k in CARD_SETTINGS})
    out["chat_template"] = str(settings.chat_template) if settings.chat_template else None
    return out


def engine_meta(state: ServerState) -> dict[str, Any] | None:
    """The context facts of a loaded model (``meta`` in its card)."""
    if not state.engine.ready:
        return None
    info = state.engine.info
    return {
        "n_ctx": info.n_ctx,
        "n_ctx_per_slot": info.n_ctx_slot,
        "n_parallel": info.n_parallel,
        "n_ctx_train": info.n_ctx_train,
        "n_vocab": info.n_vocab,
        "description": info.description,
    }


def managed_card(m: ManagedModel) -> dict[str, Any]:
    """The card of one managed model: router-mode ``status`` plus haloserve's ``halo`` block."""
    status: dict[str, Any] = {"value": SHOWN_STATUS.get(m.status, m.status)}
    if m.status == "failed":
        status.update(failed=True, error=m.error or "")
    card = model_card(m.id, meta=engine_meta(m.state) if m.state is not None else None)
    card["aliases"] = list(m.entry.aliases)
    card["status"] = status
    card["halo"] = {
        "memory_bytes": m.need_bytes or 0,
        "pinned": m.entry.pinned,
        "ttl": m.entry.ttl,
        "settings": card_settings(m.entry.settings, str(m.entry.path)),
        "last_used": m.last_used,
    }
    return card


def single_card(state: ServerState, memory_bytes: int) -> dict[str, Any]:
    """The card of the one model of ``halo serve --model``: the same shape, always loaded once ready."""
    ready = state.engine.ready and state.template is not None
    status: dict[str, Any] = {"value": "loaded" if ready else ("failed" if state.load_error else "loading")}
    if state.load_error:
        status.update(failed=True, error=state.load_error)
    card = model_card(state.model_id, meta=engine_meta(state))
    card["aliases"] = list(state.aliases)
    card["status"] = status
    path = state.engine.info.model_path if ready else str(state.settings.model or "")
    card["halo"] = {
        "memory_bytes": memory_bytes,
        "pinned": True,
        "ttl": None,
        "settings": card_settings(state.settings, path),
        "last_used": None,
    }
    return card


def model_cards(request: Request) -> list[dict[str, Any]]:
    """Every model's card, for ``/v1/models`` and ``GET /models``."""
    models = manager_of(request)
    if models is not None:
        return [managed_card(m) for m in models.models.values()]
    state = state_of(request)
    return [single_card(state, _single_memory(request, state))]


def _single_memory(request: Request, state: ServerState) -> int:
    cached: int | None = getattr(request.app.state, "planned_bytes", None)
    if cached is None:
        cached = 0
        if state.settings.engine == "llama" and state.engine.ready:
            from pathlib import Path

            from haloserve.server.model_memory import planned_bytes

            try:
                cached = planned_bytes(Path(state.engine.info.model_path), state.settings)
            except Exception:  # a model the planner cannot read still serves; its card says 0
                cached = 0
        if state.engine.ready:
            request.app.state.planned_bytes = cached
    return cached


@asynccontextmanager
async def serving_for(request: Request, model: str, kind: str) -> AsyncIterator[Any]:
    """The serving object (``chat``, ``completion``, ``tokens``) of the model a request names, held for the
    block: with many models it is loaded first and cannot be unloaded until the block ends."""
    models = manager_of(request)
    if models is None:
        yield getattr(request.app.state, f"{kind}_serving")
        return
    check_api_key(state_of(request), request)
    async with models.use(model) as m:
        yield m.servings[kind]


def _model_name(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequestError("the body must be a JSON object with a 'model' name", param="model")
    return str(body["model"])


async def _managed(request: Request) -> tuple[ModelManager, str]:
    check_api_key(state_of(request), request)
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        raise InvalidRequestError("malformed JSON body") from None
    name = _model_name(body)
    models = manager_of(request)
    if models is None:
        raise InvalidRequestError(
            "this server serves one model (--model); start it with --models-dir or --models to load and"
            " unload models",
            param="model",
        )
    return models, name


@router.get("/models", summary="Every known model and its state (llama-server router mode)")
async def list_router_models(request: Request) -> JSONResponse:
    """``GET /models``: the same cards as ``/v1/models``."""
    check_api_key(state_of(request), request)
    return JSONResponse(model_list(model_cards(request)))


@router.post("/models/load", summary="Load a model (llama-server router mode)")
async def load_model(request: Request) -> JSONResponse:
    """``{"model": ID}`` -> ``{"success": true}`` once loaded (evicting idle models when needed)."""
    models, name = await _managed(request)
    await models.load(name)
    return JSONResponse({"success": True})


@router.post("/models/unload", summary="Unload a model (llama-server router mode)")
async def unload_model(request: Request) -> JSONResponse:
    """``{"model": ID}`` -> ``{"success": true}`` once unloaded (running requests finish first, bounded)."""
    models, name = await _managed(request)
    await models.unload(name)
    return JSONResponse({"success": True})
