"""Model cards: the entries of ``GET /v1/models``, the same shape from the server and the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from haloserve.errors import ModelNotFoundError

# What the cards say in ``created``: when this process started serving (it does not know when the
# model file was made, and a value that moved on every request would look like a new model).
STARTED = int(time.time())
OWNER = "haloserve"


def model_card(
    model_id: str, *, meta: dict[str, Any] | None = None, created: int = STARTED
) -> dict[str, Any]:
    """One model's card (``meta``: this server's facts about it, an extension OpenAI clients ignore)."""
    card: dict[str, Any] = {"id": model_id, "object": "model", "created": created, "owned_by": OWNER}
    if meta is not None:
        card["meta"] = meta
    return card


def model_list(cards: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The ``GET /v1/models`` body."""
    return {"object": "list", "data": list(cards)}


def find_card(cards: Iterable[dict[str, Any]], model_id: str) -> dict[str, Any]:
    """The card of ``model_id`` (``GET /v1/models/{id}``); a 404 in OpenAI's words when none is."""
    for card in cards:
        if card["id"] == model_id:
            return card
    raise unknown_model(model_id)


def unknown_model(model_id: str) -> ModelNotFoundError:
    """The 404 for a model nobody serves, in OpenAI's words."""
    return ModelNotFoundError(f"The model `{model_id}` does not exist", param="model")
