"""``POST /tokenize`` and ``POST /detokenize`` (llama-server's): the model's tokenizer over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request

from haloserve.errors import InvalidRequestError
from haloserve.server.state import ServerState, check_api_key


class TokenServing:
    """Text to token ids and back, with the loaded model's tokenizer."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def check(self, request: Request) -> None:
        """The key, then readiness."""
        check_api_key(self.state, request)
        self.state.require_ready()

    async def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"content": str, "add_special": bool}`` -> ``{"tokens": [int]}``."""
        content = body.get("content")
        if not isinstance(content, str):
            raise InvalidRequestError("content must be a string", param="content")
        add_special = bool(body.get("add_special", False))
        # Up to --max-body-bytes of text: tokenised in a worker thread so that other streams keep flowing.
        tok = self.state.engine.tokenizer
        return {"tokens": await asyncio.to_thread(tok.tokenize, content, add_special=add_special)}

    def detokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"tokens": [int]}`` -> ``{"content": str}``."""
        tokens = body.get("tokens")
        n_vocab = self.state.engine.info.n_vocab
        if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < n_vocab for t in tokens):
            raise InvalidRequestError(
                f"tokens must be a list of token ids in 0..{n_vocab - 1}", param="tokens"
            )
        return {"content": self.state.engine.tokenizer.detokenize(tokens)}
