"""``POST /v1/chat/completions`` and ``POST /v1/completions``: validate, hand the request to the
endpoint's serving object, which builds the engine request and writes the reply."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from haloserve.protocol.openai import ChatCompletionRequest, CompletionRequest
from haloserve.server.chat.serving import ChatServing
from haloserve.server.completion import CompletionServing
from haloserve.server.model_routes import serving_for

router = APIRouter()


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI)")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion, streamed as SSE when ``stream`` is true."""
    serving: ChatServing
    async with serving_for(request, body.model, "chat") as serving:
        serving.check(request, body)
        gen = await serving.build(body, request.scope["state"]["request_id"])
        return await serving.respond(request, gen)


@router.post("/v1/completions", summary="Text completion (OpenAI)")
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Text completion, streamed as SSE when ``stream`` is true."""
    serving: CompletionServing
    async with serving_for(request, body.model, "completion") as serving:
        serving.check(request, body)
        gen = await serving.build(body, request.scope["state"]["request_id"])
        return await serving.respond(request, gen)
