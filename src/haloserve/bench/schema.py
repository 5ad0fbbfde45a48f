"""The versioned shape of ``results.json``: pydantic models that validate what ``halo bench`` writes.

``schema_version`` changes whenever a field changes meaning or disappears; new optional fields keep
the version. ``halo bench compare`` refuses files of a version it does not know.
Raw per-request timings are in seconds (``*_s``), as vLLM records them; summary metrics in
milliseconds (``*_ms``), as vLLM reports them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_NAME = "haloserve.bench"
SCHEMA_VERSION = 1

ErrorKind = Literal["connect", "http", "timeout", "broken_stream", "early_close", "other"]
TokenSource = Literal["usage", "chunks", "estimate", "mixed", "none"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestRecord(_Model):
    """One measured request: its timings (seconds) and token counts, or why it failed."""

    index: int = Field(description="Order of issue within the level.")
    id: str = Field(description="The X-Request-Id sent with it.")
    session: int = Field(default=0, description="Conversation it belongs to (multi-turn workloads).")
    turn: int = Field(default=0, description="Turn within the conversation, from 0.")
    start_s: float = Field(description="When the request was written, seconds after the level began.")
    client_overhead_s: float = Field(
        default=0.0, description="Client time from issuing the request to writing it (not in TTFT)."
    )
    ok: bool
    ttft_s: float | None = Field(default=None, description="Send to first token.")
    e2el_s: float | None = Field(default=None, description="Send to last token.")
    itl_s: list[float] = Field(default_factory=list, description="Gaps between successive token chunks.")
    prompt_tokens: int = 0
    prompt_tokens_source: Literal["usage", "estimate"] = "estimate"
    output_tokens: int = 0
    output_tokens_source: Literal["usage", "chunks"] = "chunks"
    error_kind: ErrorKind | None = None
    status: int | None = Field(default=None, description="HTTP status when the server answered.")
    error: str | None = Field(default=None, description="Short error message (no prompt text).")
    resent: bool = Field(
        default=False,
        description="Sent a second time on a new connection: the server had closed the kept-alive one "
        "before answering (timings are of the second send).",
    )


class Distribution(_Model):
    """Summary of one latency metric in milliseconds (percentiles interpolate linearly, as numpy)."""

    count: int = 0
    mean: float = 0.0
    std: float = 0.0
    min: float = 0.0
    median: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0


class LevelMetrics(_Model):
    """The metrics of one load level, defined as vLLM's ``vllm bench serve`` defines them."""

    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float = Field(description="Completed requests per second.")
    output_throughput: float = Field(description="Output tokens per second.")
    total_token_throughput: float = Field(description="Input plus output tokens per second.")
    request_goodput: float | None = Field(default=None, description="Requests meeting every SLO, per second.")
    good: int | None = None
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2el_ms: Distribution
    client_overhead_ms: Distribution = Field(
        default_factory=Distribution, description="The load generator's own time before each send."
    )
    errors: dict[str, int] = Field(default_factory=dict, description="Failed requests by kind.")
    http_statuses: dict[str, int] = Field(default_factory=dict, description="Failed requests by HTTP status.")
    first_error: str | None = None
    input_tokens_source: TokenSource = "none"
    output_tokens_source: TokenSource = "none"
    peak_concurrency: int = Field(default=0, description="Most requests in flight at once.")
    resent: int = Field(default=0, description="Requests sent again after a stale kept-alive connection.")


class LevelResult(_Model):
    """One load level: how it was driven, its metrics and its raw requests."""

    mode: Literal["concurrency", "rate"]
    value: float | None = Field(description="Concurrency, or request rate (null for an unlimited rate).")
    label: str
    burstiness: float | None = None
    max_concurrency: int | None = None
    warmup_requests: int = 0
    clock_origin_s: float | None = Field(
        default=None, description="time.perf_counter() at the level's start, to match server-side clocks."
    )
    metrics: LevelMetrics
    requests: list[RequestRecord] = Field(default_factory=list)


class ServerInfo(_Model):
    """What the target said about itself before the run."""

    url: str
    model: str
    models: list[str] = Field(default_factory=list)
    server_header: str | None = None


class Environment(_Model):
    """Where the benchmark ran: the client side, and the server it measured."""

    halo_version: str
    python: str
    platform: str
    cpu: str
    cpu_count: int
    event_loop: str
    aiohttp: str
    started_at: str
    server: ServerInfo


class BenchResult(_Model):
    """Everything one ``halo bench`` run measured: the content of ``results.json``."""

    schema_name: Literal["haloserve.bench"] = Field(default="haloserve.bench", alias="schema")
    schema_version: Literal[1] = 1
    label: str
    settings: dict[str, object]
    environment: Environment
    notes: list[str] = Field(default_factory=list)
    levels: list[LevelResult]

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json_dict(self, raw: bool = True) -> dict[str, object]:
        """Plain JSON data; ``raw=False`` leaves out the per-request records."""
        exclude = {"levels": {"__all__": {"requests"}}} if not raw else None
        return self.model_dump(mode="json", by_alias=True, exclude=exclude)
