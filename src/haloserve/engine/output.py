"""What an engine yields for a request: :class:`Output` events, with :class:`TokenLogprob` details.

Below both :mod:`haloserve.engine.base` (which re-exports these names) and :mod:`haloserve.engine.bridge`
(whose streams carry them), so that neither imports the other to name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(slots=True)
class TokenLogprob:
    """The log-probability of one sampled token and of the most likely alternatives (raw logits)."""

    token: int
    piece: bytes
    logprob: float
    top: list[tuple[int, bytes, float]] = field(default_factory=list)


@dataclass(slots=True)
class Output:
    """A step's result for one request: new text, and on the last event a finish reason and usage."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None
    # Set when the request's own content caused the error (say, a schema no output can satisfy): the
    # parameter at fault. Such an error is the client's (400), not the server's (500).
    error_param: str | None = None
