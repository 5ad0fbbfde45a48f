"""Behaviour, counters and the toy tokenizer of the fake OpenAI upstream (pure data, no I/O).

The fake's tokenizer is deliberately trivial and stated: **a token is a whitespace-separated piece**
of text. Prompt tokens are the pieces across all message contents (or the prompt; a list of token ids
counts its length). Every generated token is one word with a leading space, so the output text has
exactly as many pieces as ``completion_tokens``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Words the fake "generates": short, one whitespace piece each.
OUTPUT_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


class UpstreamConfig(BaseModel):
    """Everything the fake upstream can be told to do; changeable at run time via ``POST /fake/config``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    models: list[str] = Field(default_factory=lambda: ["fake-model"], min_length=1)
    words: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Tokens generated in turn instead of the lorem-ipsum words (one string per token; e.g. "
        "markup, to test that a client renders model output as text).",
    )
    ttft_ms: float = Field(default=0.0, ge=0, description="Time from request receipt to the first token.")
    itl_ms: float = Field(default=0.0, ge=0, description="Interval between successive tokens.")
    default_max_tokens: int = Field(default=16, ge=1, description="Output length when the request sets none.")
    eos_after: int | None = Field(
        default=None,
        ge=1,
        description="Natural stop after N tokens unless ignore_eos (min_tokens still applies).",
    )
    api_key: str | None = Field(
        default=None, description="When set, requests need 'Authorization: Bearer KEY'."
    )
    error_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of requests answered with error_status."
    )
    error_status: int = Field(default=500, ge=400, le=599)
    error_on: str | None = Field(
        default=None,
        min_length=1,
        description="Answer error_status to every request whose raw body contains this text: a failure "
        "the request causes, not the server (as a lone surrogate once gave 500).",
    )
    drop_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of requests whose connection is closed before headers."
    )
    drop_reused: bool = Field(
        default=False,
        description="Drop, unanswered, every request that arrives on a connection which already served "
        "one (a server that closes kept-alive connections as new requests arrive, as llama-server does).",
    )
    cut_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of streams cut (connection closed) mid-way."
    )
    cut_after_tokens: int = Field(default=2, ge=0, description="Tokens sent before a cut or a broken event.")
    broken_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of streams carrying a malformed SSE event."
    )
    unframed_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of streams that, after cut_after_tokens tokens, send data lines without the "
        "blank line that ends an event, without end (until the client leaves or flood_bytes were sent).",
    )
    endless_header_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of requests answered by a response head whose last header never ends.",
    )
    flood_bytes: int = Field(
        default=1 << 30, ge=1, description="Most bytes an unframed stream or endless header sends."
    )
    line_end: Literal["lf", "crlf", "cr"] = Field(
        default="lf",
        description="Line end of streamed SSE events: 'crlf' as sse-starlette sends them ('\\r\\n\\r\\n' "
        "between events), 'cr' for bare carriage returns.",
    )
    header_delay_ms: float = Field(default=0.0, ge=0, description="Delay before response headers are sent.")
    health_status: int = Field(default=200, ge=200, le=599, description="Status /health answers.")
    model_status: dict[str, Literal["loaded", "loading", "unloaded", "failed"]] = Field(
        default_factory=dict,
        description="Lifecycle state /v1/models reports per model, as a multi-model server does (a model "
        "not named here has no status field, as from llama-server or vLLM); a request for an 'unloaded' "
        "model loads it.",
    )
    seed: int = Field(default=0, description="Seed of the failure-injection draws.")
    record_timings: bool = Field(
        default=False, description="Keep per-request send timestamps for /fake/timings."
    )
    max_timings: int = Field(default=100_000, ge=0, description="Most requests kept in the timing record.")


def count_tokens(text: str) -> int:
    """Tokens of ``text`` by the fake's rule: whitespace-separated pieces."""
    return len(text.split())


def prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a chat or completions request body by the fake's rule."""
    messages = body.get("messages")
    if isinstance(messages, list):
        total = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                total += count_tokens(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        total += count_tokens(part["text"])
        return total
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return count_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return len(prompt)
        return sum(count_tokens(p) if isinstance(p, str) else len(p) for p in prompt)
    return 0


def output_tokens(body: dict[str, Any], config: UpstreamConfig, chat: bool) -> tuple[int, str]:
    """How many tokens to generate and the finish reason, from max_tokens, ignore_eos and min_tokens."""
    limit = body.get("max_completion_tokens") if chat else None
    if not isinstance(limit, int) or isinstance(limit, bool):
        limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        limit = config.default_max_tokens
    if config.eos_after is None or body.get("ignore_eos"):
        return limit, "length"
    min_tokens = body.get("min_tokens") or 0
    natural = max(config.eos_after, int(min_tokens) if isinstance(min_tokens, int) else 0)
    if natural >= limit:
        return limit, "length"
    return natural, "stop"


def token_text(index: int) -> str:
    """The text of generated token ``index``: one word with a leading space."""
    return " " + OUTPUT_WORDS[index % len(OUTPUT_WORDS)]


@dataclass
class Injection:
    """The failure drawn for one request (at most one kind)."""

    error: bool = False
    drop: bool = False
    cut: bool = False
    broken: bool = False
    unframed: bool = False
    endless_header: bool = False


def draw_injection(config: UpstreamConfig, rng: random.Random) -> Injection:
    """Draw which failure, if any, this request gets; rates are independent shares, checked in order."""
    if config.drop_rate and rng.random() < config.drop_rate:
        return Injection(drop=True)
    if config.error_rate and rng.random() < config.error_rate:
        return Injection(error=True)
    if config.cut_rate and rng.random() < config.cut_rate:
        return Injection(cut=True)
    if config.broken_rate and rng.random() < config.broken_rate:
        return Injection(broken=True)
    if config.unframed_rate and rng.random() < config.unframed_rate:
        return Injection(unframed=True)
    if config.endless_header_rate and rng.random() < config.endless_header_rate:
        return Injection(endless_header=True)
    return Injection()


@dataclass
class UpstreamStats:
    """Counters the tests read at ``GET /fake/stats``."""

    requests: int = 0
    connections: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    completed: int = 0
    cancelled: int = 0
    streams: int = 0
    tokens_sent: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    injected: dict[str, int] = field(
        default_factory=lambda: {
            "error": 0,
            "poisoned": 0,
            "drop": 0,
            "reused": 0,
            "cut": 0,
            "broken": 0,
            "unframed": 0,
            "endless_header": 0,
        }
    )
    lateness_ms_max: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain JSON data."""
        return {
            "requests": self.requests,
            "connections": self.connections,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "streams": self.streams,
            "tokens_sent": self.tokens_sent,
            "by_path": dict(self.by_path),
            "by_status": dict(self.by_status),
            "injected": dict(self.injected),
            "lateness_ms_max": round(self.lateness_ms_max, 3),
        }
