"""The seam under the scheduler: what the batching engine asks of a model runtime.

The scheduler (engine/scheduler.py) decides which tokens of which sequences go into each step and what
happens with the result; a :class:`Backend` only runs them: one forward pass over a batch, a row of
logits, sampling, KV-cache edits and token pieces. ``engine/llama_backend.py`` implements it over
llama.cpp; ``engine/fake_backend.py`` is a scripted model that runs in microseconds, so the scheduler is
tested without loading one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from haloserve.engine.base import EngineInfo, SamplingParams, Tokenizer


class Span(NamedTuple):
    """Consecutive tokens of one sequence in a batch, at positions ``pos``, ``pos + 1``, ..."""

    tokens: Sequence[int]
    pos: int
    seq: int
    logits: bool  # whether the last token's logits are wanted (to sample after it)


class TokenSampler(Protocol):
    """A per-request sampler chain made by :meth:`Backend.sampler`."""

    def close(self) -> None:
        """Free the chain (idempotent)."""
        ...


class Backend(Protocol):
    """One model and one context whose sequences share a KV cache, driven by one thread.

    Batch indices (for :meth:`logits` and :meth:`sample`) count tokens across the spans of the last
    :meth:`decode`, from 0; only the last token of a span with ``logits`` has a row.
    """

    @property
    def info(self) -> EngineInfo:
        """Static facts about the model and context (``n_ctx_slot`` bounds each sequence)."""
        ...

    @property
    def n_batch(self) -> int:
        """Most tokens one :meth:`decode` takes."""
        ...

    @property
    def n_ubatch(self) -> int:
        """Tokens in one micro-batch (one pass over the weights)."""
        ...

    @property
    def eog_tokens(self) -> frozenset[int]:
        """Tokens that end a generation."""
        ...

    @property
    def tokenizer(self) -> Tokenizer:
        """Text <-> tokens for the server (the llama.cpp model itself, for the grammar code)."""
        ...

    @property
    def chat_template(self) -> str | None:
        """The model's own chat template, if any."""
        ...

    def decode(self, spans: Sequence[Span]) -> int:
        """Run the model over ``spans``, adding them to the KV cache; 0 on success, else llama.cpp's code."""
        ...

    def logits(self, idx: int) -> np.ndarray:
        """The logits at batch index ``idx`` of the last decode: a writable float32 row over the vocabulary
        that :meth:`sample` then reads (so a grammar mask applied to it constrains the sample)."""
        ...

    def sampler(
        self, params: SamplingParams, prompt_tail: Sequence[int], *, seq: int = -1, cpu_only: bool = False
    ) -> TokenSampler:
        """A sampler chain for one request (``prompt_tail`` seeds the repetition penalties).

        ``seq`` is the sequence it samples for; ``cpu_only`` says the request reads or edits the row of
        logits (grammar, logprobs), so the chain may not run in the backend's graph.
        """
        ...

    def sample(self, sampler: Any, idx: int, n_generated: int) -> int:
        """Sample and accept the next token with ``sampler`` from the logits at batch index ``idx``."""
        ...

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Drop positions [p0, p1) of ``seq`` from the KV cache (-1: open-ended)."""
        ...

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token; control tokens are empty unless ``special``."""
        ...

    def close(self) -> None:
        """Free the context and the model."""
        ...
