"""Operational routes: /health, /metrics, /v1/models and llama-server's /props."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from haloserve.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from haloserve.protocol.models import find_card, model_list
from haloserve.protocol.openai import find_invalid_text, invalid_text_message
from haloserve.server.model_routes import manager_of, model_cards, serving_for
from haloserve.server.state import ServerState, check_api_key, state_of
from haloserve.server.tokens import TokenServing

router = APIRouter()


@router.get("/health", summary="200 when ready to serve, 503 while the model loads")
async def health(request: Request) -> JSONResponse:
    """Readiness: 503 (OpenAI error shape) while loading, 200 with slot counts when ready."""
    state = state_of(request)
    models = manager_of(request)
    if models is not None:
        return _models_health(state, models)
    state.require_ready()
    st = state.engine.stats()
    info = state.engine.info
    return JSONResponse(
        {
            "status": "ok",
            "model": state.model_id,
            "slots_total": info.n_parallel,
            "slots_idle": info.n_parallel - st.busy_slots,
            "slots_processing": st.busy_slots,
            "queue_depth": st.queue_depth,
            # where the layers are when the model is split over devices (RPC workers included)
            **({"devices": _devices(info.extra["backend"])} if _split(info.extra) else {}),
        }
    )


def _models_health(state: ServerState, models: Any) -> JSONResponse:
    """Many models: 200 while at least one model is loaded or can be loaded, with each one's state."""
    if state.draining:
        raise ServiceUnavailableError("the server is shutting down", retry_after=5.0)
    shown = {m.id: ("unloaded" if m.status == "unloading" else m.status) for m in models.models.values()}
    if not models.fits_any():
        raise ServiceUnavailableError(
            "no model can be served: " + ", ".join(f"{k} {v}" for k, v in shown.items())
        )
    return JSONResponse({"status": "ok", "models": shown})


def _split(extra: dict[str, Any]) -> bool:
    usage = extra.get("backend", {}).get("device_usage", [])
    return sum(1 for d in usage if d["layers"]) > 1 or any(d["backend"].startswith("RPC") for d in usage)


def _devices(backend: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("name", "backend", "description", "layers", "memory_free", "memory_total")
    return [{k: d[k] for k in keys} for d in backend["device_usage"]]


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this server's registry."""
    state = state_of(request)
    if not state.settings.metrics:
        raise NotFoundError("metrics are disabled (--no-metrics)")
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", summary="The served models and their state")
async def list_models(request: Request) -> JSONResponse:
    """OpenAI ``GET /v1/models``, each card with its ``status`` and haloserve's ``halo`` block."""
    check_api_key(state_of(request), request)
    return JSONResponse(model_list(model_cards(request)))


@router.get("/v1/models/{model_id:path}", summary="One model")
async def get_model(model_id: str, request: Request) -> JSONResponse:
    """OpenAI ``GET /v1/models/{id}``."""
    check_api_key(state_of(request), request)
    return JSONResponse(find_card(model_cards(request), model_id))


@router.get("/props", summary="llama-server compatible server properties")
async def props(request: Request) -> JSONResponse:
    """``total_slots`` and context facts, in llama-server's ``/props`` shape (read by gateways); with many
    models, of the loaded model named by ``?model=`` (router mode's spelling)."""
    state = state_of(request)
    check_api_key(state, request)
    models = manager_of(request)
    if models is not None:
        m = models.resolve(request.query_params.get("model", ""))
        if m.state is None:
            raise ServiceUnavailableError(f"model {m.id!r} is not loaded", retry_after=5.0)
        state = m.state
    state.require_ready()
    info = state.engine.info
    return JSONResponse(
        {
            "total_slots": info.n_parallel,
            "model_path": info.model_path,
            "model_alias": state.model_id,
            "default_generation_settings": {"n_ctx": info.n_ctx_slot},
            "chat_template": state.template.source if state.template else None,
            "build_info": "haloserve",
            # haloserve's own: ggml devices, layers offloaded, where weights and KV cache live, and the
            # context's RoPE/YaRN, KV and attention parameters (what `halo serve` prints at start-up); with
            # --rpc, the last load: seconds, bytes sent to the workers, reloads so far
            **{k: info.extra[k] for k in ("backend", "context", "load") if k in info.extra},
        }
    )


@router.post("/tokenize", summary="llama-server compatible tokenizer")
async def tokenize(request: Request) -> JSONResponse:
    """``{"content": str, "add_special": bool}`` -> ``{"tokens": [int]}`` (``model``: which one)."""
    async with _token_serving(request) as (serving, body):
        return JSONResponse(await serving.tokenize(body))


@router.post("/detokenize", summary="llama-server compatible detokenizer")
async def detokenize(request: Request) -> JSONResponse:
    """``{"tokens": [int]}`` -> ``{"content": str}`` (many models: ``model`` names one)."""
    async with _token_serving(request) as (serving, body):
        return JSONResponse(serving.detokenize(body))


@asynccontextmanager
async def _token_serving(request: Request) -> AsyncIterator[tuple[TokenServing, dict[str, Any]]]:
    """The checked token serving and the body (one model: checked before the body is read)."""
    if manager_of(request) is None:
        serving: TokenServing = request.app.state.token_serving
        serving.check(request)
        yield serving, await _json_object(request)
        return
    body = await _json_object(request)
    async with serving_for(request, str(body.get("model") or ""), "token") as serving:
        serving.check(request)
        yield serving, body


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the JSON parser goes
        raise InvalidRequestError("malformed JSON body") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    found = find_invalid_text(body)
    if found is not None:
        raise InvalidRequestError(invalid_text_message(*found), param=found[1])
    return body
