"""Settings of ``halo bench``: target, workload, load and output, declared once."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, field_validator

from haloserve.config.base import HaloSettings, option


def _split(value: Any) -> Any:
    """Accept ``"1,4,16"``, ``["1,4", "16"]`` or ``[1, 4]`` for list options."""
    if isinstance(value, (str, int, float)):
        value = [value]
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            if isinstance(item, str):
                out += [p.strip() for p in item.split(",") if p.strip()]
            else:
                out.append(item)
        return out
    return value


class BenchSettings(HaloSettings):
    """``halo bench``: measure an OpenAI-compatible server the way ``vllm bench serve`` does."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, ser_json_inf_nan="strings")

    url: str = option("http://127.0.0.1:8080", "Base URL of the OpenAI-compatible server.", metavar="URL")
    model: str | None = option(None, "Model id to request (default: the first one /v1/models lists).")
    api_key: str | None = option(
        None, "API key sent as a Bearer token.", env=("OPENAI_API_KEY",), secret=True
    )
    endpoint: Literal["chat", "completions"] = option(
        "chat", "API to call: /v1/chat/completions or /v1/completions."
    )
    workload: Literal["synthetic", "shared-prefix", "multi-turn", "file"] = option(
        "synthetic", "Prompts to send (file needs --dataset; --dataset alone implies file)."
    )
    dataset: Path | None = option(None, "JSONL of prompts/messages, or ShareGPT JSON/JSONL.", metavar="FILE")
    input_len: int = option(1024, "Prompt length in words (about one token each).", gt=0)
    output_len: int | None = option(None, "Output tokens per request (default 128, or the dataset's).", gt=0)
    length_dist: Literal["fixed", "uniform", "normal", "exponential"] = option(
        "fixed", "How input and output lengths vary around their means."
    )
    length_spread: float = option(
        0.25, "Relative spread for uniform (half-width) and normal (sigma).", ge=0, le=1
    )
    prefix_len: int = option(512, "shared-prefix workload: system prompt length in words.", ge=0)
    num_prefixes: int = option(1, "shared-prefix workload: how many distinct system prompts.", gt=0)
    turns: int = option(4, "multi-turn workload (and ShareGPT files): user turns per conversation.", gt=0)
    concurrency: list[int] = option(
        default_factory=list,
        description="Requests in flight; a comma list sweeps (default 1,4,16).",
        metavar="N,...",
    )
    rate: list[float] = option(
        default_factory=list,
        description="Request arrival rates per second (Poisson; inf = all at once).",
        metavar="R,...",
    )
    burstiness: float = option(1.0, "Gamma shape of arrivals: 1 is Poisson, <1 burstier, >1 steadier.", gt=0)
    max_concurrency: int | None = option(None, "With --rate: cap on requests in flight.", gt=0)
    num_prompts: int | None = option(
        None, "Requests per level (default 4 x concurrency, min 8; rate x 30 s).", gt=0
    )
    duration: float | None = option(None, "Seconds per level; new requests stop after it.", gt=0)
    warmup: int = option(2, "Requests per level sent first and left out of the metrics.", ge=0)
    slo: str | None = option(None, "Goodput SLOs, e.g. ttft=500ms,tpot=50ms (also e2el).", metavar="SPEC")
    ignore_eos: bool = option(True, "Ask for exactly the output length (ignore_eos, min_tokens).")
    extra_body: str | None = option(None, "JSON object merged into every request body.", metavar="JSON")
    keepalive: bool = option(
        True,
        "Reuse connections between requests, as vLLM's client does (--no-keepalive: one per request).",
    )
    timeout: float = option(600.0, "Seconds one request may take.", gt=0)
    seed: int = option(0, "Seed for prompts, lengths and arrivals.")
    label: str | None = option(None, "Name of this run in reports and comparisons.")
    output: Path | None = option(None, "Directory for results.json, summary.md and plots.", metavar="DIR")
    plots: bool = option(True, "Draw PNG plots into --output.")
    preflight: bool = option(True, "Check the server and model with GET /v1/models first.")
    progress: bool = option(True, "Show a live progress bar on stderr.")

    _split_lists = field_validator("concurrency", "rate", mode="before")(
        classmethod(lambda cls, v: _split(v))
    )

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("concurrency levels must be at least 1")
        return v

    @field_validator("rate")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if any(not (r > 0) or math.isnan(r) for r in v):
            raise ValueError("rates must be positive numbers or inf")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.removesuffix("/v1")

    @field_validator("slo")
    @classmethod
    def _slo(cls, v: str | None) -> str | None:
        from haloserve.bench.metrics import parse_slo

        parse_slo(v)
        return v

    @field_validator("extra_body")
    @classmethod
    def _extra(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                obj = json.loads(v)
            except ValueError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise ValueError("must be a JSON object")
        return v

    def checked(self) -> BenchSettings:
        """These settings after the checks that span several options; raises ConfigError."""
        from haloserve.errors import ConfigError

        if self.concurrency and self.rate:
            raise ConfigError("use --concurrency alone, or --rate with --max-concurrency")
        if self.max_concurrency is not None and not self.rate:
            raise ConfigError("--max-concurrency applies to --rate runs; use --concurrency alone")
        if self.dataset is not None and self.workload == "synthetic":
            return self.model_copy(update={"workload": "file"})
        if self.workload == "file" and self.dataset is None:
            raise ConfigError("the file workload needs --dataset FILE")
        return self
