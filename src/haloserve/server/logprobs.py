"""OpenAI's ``logprobs`` shapes from the engine's :class:`~haloserve.engine.base.TokenLogprob` entries:
chat's ``logprobs.content`` and the completions endpoint's parallel lists."""

from __future__ import annotations

from typing import Any

from haloserve.engine.base import TokenLogprob


def _token_text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(items: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Chat ``logprobs.content`` entries."""
    return [
        {
            "token": _token_text(lp.piece),
            "logprob": lp.logprob,
            "bytes": list(lp.piece),
            "top_logprobs": [{"token": _token_text(p), "logprob": v, "bytes": list(p)} for _, p, v in lp.top],
        }
        for lp in items
    ]


def completion_logprobs(items: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """Completions ``logprobs``: tokens, token_logprobs, top_logprobs (dicts) and text offsets."""
    tokens, values, tops, offsets = [], [], [], []
    pos = offset
    for lp in items:
        text = _token_text(lp.piece)
        tokens.append(text)
        values.append(lp.logprob)
        top = {_token_text(p): v for _, p, v in lp.top}
        top.setdefault(text, lp.logprob)
        tops.append(top)
        offsets.append(pos)
        pos += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
