"""The engine seam: what produces tokens, as seen by the HTTP server.

An :class:`Engine` takes a :class:`GenerationRequest` (prompt token ids plus sampling settings) and
yields :class:`Output` events as tokens are produced. The embedded llama.cpp engine and the fake engine
both implement it; the server never knows which one it talks to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from haloserve.engine.output import FinishReason as FinishReason
from haloserve.engine.output import Output as Output
from haloserve.engine.output import TokenLogprob as TokenLogprob

if TYPE_CHECKING:
    from haloserve.engine.bridge import RequestStream


@dataclass(slots=True)
class SamplingParams:
    """Per-request sampling, resolved from the request and the server's defaults."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    ignore_eos: bool = False
    min_tokens: int = 0

    @property
    def greedy(self) -> bool:
        """Temperature 0 (or top_k 1) means deterministic arg-max decoding."""
        return self.temperature <= 0.0 or self.top_k == 1


@dataclass(slots=True)
class GenerationRequest:
    """One unit of work for the engine: a tokenised prompt and how to continue it."""

    request_id: str
    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: Sequence[str] = ()
    arrival_time: float = 0.0
    # Structured output: a grammar matcher that masks the logits of every step (see engine/grammar.py).
    constraint: Constraint | None = None
    # None: no logprobs; n >= 0: the sampled token's logprob plus the n most likely alternatives.
    logprobs: int | None = None
    # Special tokens rendered as text (tool-call and reasoning markers the parsers look for).
    preserved_tokens: frozenset[int] = frozenset()


class Constraint(Protocol):
    """A per-request grammar: which tokens may come next, fed each sampled token."""

    def compute_mask(self) -> None:
        """Compute the allowed-token mask for the next step (may run in a worker thread)."""
        ...

    def apply(self, logits: Any) -> None:
        """Set the logits (a float32 numpy view over the vocabulary) of disallowed tokens to -inf."""
        ...

    def accept(self, token: int) -> bool:
        """Advance past ``token``; False when it violates the grammar."""
        ...

    @property
    def done(self) -> bool:
        """True when the grammar is complete and nothing but end-of-generation may follow."""
        ...

    @property
    def error(self) -> str:
        """Why the matcher failed, in one short line for the client ('' when it has not)."""
        ...

    @property
    def param(self) -> str:
        """The request parameter the grammar came from (``response_format`` or ``tools``)."""
        ...


@dataclass(slots=True)
class EngineInfo:
    """Static facts about the loaded model and context, for /v1/models, /health and start-up."""

    model_path: str
    n_ctx: int
    n_ctx_slot: int
    n_parallel: int
    n_vocab: int
    n_ctx_train: int
    kv_cache_bytes: int = 0
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # What the engine can do beyond plain sampling: "grammar" (constraints), "logprobs".
    features: frozenset[str] = frozenset()


@dataclass(slots=True)
class EngineStats:
    """Counters and gauges read by /metrics (monotonic counters only ever grow)."""

    steps: int = 0
    busy_slots: int = 0
    queue_depth: int = 0
    kv_tokens: int = 0  # tokens the slots' KV caches hold now (a gauge)
    prompt_tokens_processed: int = 0
    prompt_tokens_cached: int = 0
    generated_tokens: int = 0
    decode_steps_multi: int = 0
    max_seqs_in_step: int = 0
    requests_finished: int = 0
    requests_failed: int = 0
    grammar_mask_seconds: float = 0.0  # time spent computing token masks (overlapping llama_decode)
    grammar_wait_seconds: float = 0.0  # time the engine thread waited for masks after llama_decode
    # engine-thread CPU seconds by phase of a step (engine/stepcost.py): schedule, decode, tokens, handoff
    engine_cpu_seconds: dict[str, float] = field(default_factory=dict)

    def plus(self, other: EngineStats) -> EngineStats:
        """The two engines' figures together: sums (per phase for CPU seconds), the larger step width."""
        out = EngineStats()
        for name in EngineStats.__dataclass_fields__:
            a, b = getattr(self, name), getattr(other, name)
            if name == "max_seqs_in_step":
                value = max(a, b)
            elif isinstance(a, dict):
                value = {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {*a, *b}}
            else:
                value = a + b
            setattr(out, name, value)
        return out


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids, and the special tokens a chat template needs."""

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens`` (special tokens rendered)."""
        ...

    @property
    def bos_text(self) -> str:
        """Text of the BOS token ('' if none)."""
        ...

    @property
    def eos_text(self) -> str:
        """Text of the EOS token ('' if none)."""
        ...


@runtime_checkable
class Engine(Protocol):
    """Produces tokens for requests; owns its own compute thread."""

    @property
    def info(self) -> EngineInfo:
        """Static facts; valid once :meth:`start` has returned."""
        ...

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer."""
        ...

    @property
    def chat_template(self) -> str | None:
        """The model's own chat template source (from its metadata), if any."""
        ...

    @property
    def ready(self) -> bool:
        """True once the model is loaded and requests can be served."""
        ...

    def start(self) -> None:
        """Load the model and start the compute thread (blocking; run it in a worker thread)."""
        ...

    def stop(self, timeout: float = 10.0) -> None:
        """Finish or cancel in-flight work within ``timeout`` seconds and free the model."""
        ...

    def generate(self, request: GenerationRequest) -> RequestStream:
        """Queue ``request`` (raising 429/503 at once) and return the stream of its outputs."""
        ...

    def stats(self) -> EngineStats:
        """A snapshot of the engine's counters and gauges."""
        ...
