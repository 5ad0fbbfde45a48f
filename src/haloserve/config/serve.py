"""Settings of ``halo serve``: flags, ``HALO_*`` and llama-server's ``LLAMA_ARG_*`` variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from haloserve.config import connections
from haloserve.config import models as many
from haloserve.config.base import HaloSettings, option

KVType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]


def default_threads() -> int:
    """CPUs this process may run on (llama-server uses the physical core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class ServeSettings(HaloSettings):
    """Everything ``halo serve`` can be told; each field is a flag and an environment variable."""

    # Model
    model: Path | None = option(
        None,
        "GGUF model file (split files: the first part). Default: the bundled SmolLM2-135M-Instruct.",
        env=("LLAMA_ARG_MODEL",),
        aliases=("-m",),
        metavar="PATH",
    )
    model_alias: str | None = option(
        None,
        "Model id in the API (default: derived from the file name).",
        env=("LLAMA_ARG_ALIAS",),
        aliases=("--alias", "-a"),
        metavar="NAME",
    )
    chat_template: Path | None = option(
        None,
        "Jinja chat template file overriding the one in the GGUF metadata.",
        aliases=("--chat-template-file",),
        metavar="FILE",
    )
    engine: Literal["llama", "fake"] = option(
        "llama",
        "Engine: the embedded llama.cpp engine, or a fake one for tests and benchmarks.",
    )
    # Many models on demand (config/models.py, docs/models.md)
    models_dir: Path | None = many.MODELS_DIR
    models: Path | None = many.MODELS_FILE
    memory_budget: many.Size = many.MEMORY_BUDGET
    models_max: int = many.MODELS_MAX
    model_ttl: float = many.MODEL_TTL
    model_load_timeout: float = many.MODEL_LOAD_TIMEOUT
    # Context and batching
    ctx_size: int = option(
        0,
        "Total context in tokens, split evenly across --parallel slots (0: the model's trained context).",
        env=("LLAMA_ARG_CTX_SIZE",),
        aliases=("-c",),
        ge=0,
        le=1 << 24,
    )
    parallel: int = option(
        4,
        "Sequences decoded together (slots); requests beyond this wait in the queue.",
        env=("LLAMA_ARG_N_PARALLEL",),
        aliases=("-np", "--n-parallel"),
        ge=1,
        le=256,
    )
    batch_size: int = option(
        2048,
        "Logical batch: most tokens one decode step may hold.",
        env=("LLAMA_ARG_BATCH",),
        aliases=("-b",),
        ge=32,
        le=1 << 16,
    )
    ubatch_size: int = option(
        512,
        "Physical micro-batch; while streams decode, a step holds at most this many tokens.",
        env=("LLAMA_ARG_UBATCH",),
        aliases=("-ub",),
        ge=16,
        le=1 << 16,
    )
    kv_unified: bool = option(
        False,
        "One KV buffer shared by all slots instead of one stream per slot.",
        env=("LLAMA_ARG_KV_UNIFIED",),
    )
    cache_type_k: KVType = option(
        "f16", "KV cache type for K.", env=("LLAMA_ARG_CACHE_TYPE_K",), aliases=("-ctk",)
    )
    cache_type_v: KVType = option(
        "f16", "KV cache type for V.", env=("LLAMA_ARG_CACHE_TYPE_V",), aliases=("-ctv",)
    )
    flash_attn: Literal["on", "off", "auto"] = option(
        "auto", "Flash attention.", env=("LLAMA_ARG_FLASH_ATTN",), aliases=("-fa",)
    )
    n_gpu_layers: int = option(
        -1,
        "Layers offloaded to the GPU (-1 or 999: all; a CPU-only build warns when it is given).",
        env=("LLAMA_ARG_N_GPU_LAYERS",),
        aliases=("-ngl", "--gpu-layers"),
        ge=-1,
    )
    mmap: bool = option(
        True,
        "Memory-map the model file (set false on ROCm UMA: mmap loading is very slow there).",
        env=("LLAMA_ARG_MMAP",),
    )
    repack: Literal["auto", "on", "off"] = option(
        "auto",
        "Repack weights into CPU-optimised layouts (llama.cpp's extra buffer types). auto: on, except on"
        " CPUs with AMX, where llama.cpp's AMX kernels crash (llama.cpp #20824).",
        env=("LLAMA_ARG_REPACK",),
    )
    threads: int = option(
        default_factory=default_threads,
        description="CPU threads for generation.",
        env=("LLAMA_ARG_THREADS",),
        aliases=("-t",),
        ge=1,
    )
    threads_batch: int = option(
        0,
        "CPU threads for prompt processing (0: same as --threads).",
        env=("LLAMA_ARG_THREADS_BATCH",),
        aliases=("-tb",),
        ge=0,
    )
    poll: int = option(
        50,
        "How hard idle CPU worker threads spin for the next decode step before they sleep, as llama-server's"
        " --poll (0: no spinning, 100: most). Spinning saves a wake-up every step.",
        ge=0,
        le=100,
    )
    backend_sampling: Literal["auto", "on", "off"] = option(
        "auto",
        "Sample in llama.cpp's compute graph (its backend samplers) when a request's sampling allows it"
        " (greedy, temperature, top-k/top-p/min-p, seed; grammar, logprobs, penalties, logit bias and"
        " min_tokens stay on the CPU). auto: on when the output layer is on a GPU, off on the CPU.",
    )
    # llama.cpp model and context parameters `halo plan` and `halo deploy` emit (llama-server's names);
    # the engine passes each one to llama.cpp, and config/serve_env.py refuses what this build cannot do.
    rope_scaling: Literal["none", "linear", "yarn"] | None = option(
        None,
        "RoPE scaling type (default: the model's own).",
        env=("LLAMA_ARG_ROPE_SCALING_TYPE",),
    )
    rope_scale: float | None = option(
        None,
        "RoPE context scaling factor: expands the context by N (sets the frequency scale to 1/N).",
        env=("LLAMA_ARG_ROPE_SCALE",),
        gt=0,
    )
    rope_freq_base: float = option(
        0.0, "RoPE base frequency (0: the model's own).", env=("LLAMA_ARG_ROPE_FREQ_BASE",), ge=0
    )
    rope_freq_scale: float = option(
        0.0,
        "RoPE frequency scaling factor: expands the context by 1/N (0: the model's own).",
        env=("LLAMA_ARG_ROPE_FREQ_SCALE",),
        ge=0,
    )
    yarn_orig_ctx: int = option(
        0,
        "YaRN: the model's original context (0: the model's training context).",
        env=("LLAMA_ARG_YARN_ORIG_CTX",),
        ge=0,
    )
    yarn_ext_factor: float = option(
        -1.0, "YaRN extrapolation mix factor (-1: from the model).", env=("LLAMA_ARG_YARN_EXT_FACTOR",)
    )
    yarn_attn_factor: float = option(
        -1.0, "YaRN magnitude scaling factor (-1: from the model).", env=("LLAMA_ARG_YARN_ATTN_FACTOR",)
    )
    yarn_beta_slow: float = option(
        -1.0, "YaRN high correction dim (-1: from the model).", env=("LLAMA_ARG_YARN_BETA_SLOW",)
    )
    yarn_beta_fast: float = option(
        -1.0, "YaRN low correction dim (-1: from the model).", env=("LLAMA_ARG_YARN_BETA_FAST",)
    )
    swa_full: bool = option(
        True,
        "Full-size caches for sliding-window layers (halo serve needs them to reuse prompt prefixes).",
        env=("LLAMA_ARG_SWA_FULL",),
    )
    kv_offload: bool = option(
        True,
        "Keep the KV cache on the GPU with the layers.",
        env=("LLAMA_ARG_KV_OFFLOAD",),
        aliases=("-kvo",),
    )
    tensor_split: list[float] = option(
        default_factory=list,
        description="Fraction of the model on each device, e.g. 3,1 (comma or slash separated); with --rpc"
        " the RPC workers' devices come first, then the local GPUs (as llama.cpp orders them).",
        env=("LLAMA_ARG_TENSOR_SPLIT",),
        aliases=("-ts",),
        metavar="N0,N1,...",
    )
    split_mode: Literal["none", "layer", "row", "tensor"] = option(
        "layer", "How to split the model across GPUs.", env=("LLAMA_ARG_SPLIT_MODE",), aliases=("-sm",)
    )
    main_gpu: int = option(
        0,
        "GPU for the whole model with --split-mode none.",
        env=("LLAMA_ARG_MAIN_GPU",),
        aliases=("-mg",),
        ge=0,
    )
    mlock: bool = option(False, "Lock the model in RAM (no swapping out).", env=("LLAMA_ARG_MLOCK",))
    numa: Literal["distribute", "isolate", "numactl"] | None = option(
        None, "NUMA optimisations, as llama-server's --numa (default: none).", env=("LLAMA_ARG_NUMA",)
    )
    rpc: list[str] = option(
        default_factory=list,
        description="RPC workers (`halo rpc-worker`, llama.cpp's rpc-server) to offload layers to, as"
        " host:port[,host:port...]; the engine then runs in a supervised child process (docs/rpc.md).",
        env=("LLAMA_ARG_RPC",),
        metavar="HOST:PORT",
    )
    rpc_stall_timeout: float = option(
        120.0,
        "With --rpc: seconds the engine may go without finishing a step while requests wait before it is"
        " restarted (a worker that hangs rather than dies; one step of a long prompt chunk must fit).",
        gt=0,
        metavar="SECONDS",
    )
    n_predict: int = option(
        -1,
        "Most tokens one request may generate, with or without max_tokens (-1: until its slot is full).",
        env=("LLAMA_ARG_N_PREDICT",),
        aliases=("-n",),
        ge=-1,
    )
    # Tools, structured output and reasoning
    tool_parser: Literal["auto", "hermes", "llama3_json", "mistral", "harmony"] = option(
        "auto",
        "Tool-call format of the model's output (auto: detected from the chat template, hermes if unclear).",
    )
    reasoning_format: Literal["auto", "deepseek", "none"] = option(
        "auto",
        "Reasoning (a leading think block): auto/deepseek return it as reasoning_content; none keeps it "
        "inline in content.",
        env=("LLAMA_ARG_THINK",),
    )
    # Queue
    max_queue: int = option(
        1024,
        "Requests that may wait for a free slot; more get 429 with Retry-After.",
        ge=0,
    )
    # Default sampling (a request's own values win), llama-server's defaults.
    temp: float = option(0.8, "Default temperature.", ge=0.0, le=2.0)
    top_k: int = option(40, "Default top-k (0: off).", env=("LLAMA_ARG_TOP_K",), ge=0)
    top_p: float = option(0.95, "Default top-p (1: off).", gt=0.0, le=1.0)
    min_p: float = option(0.05, "Default min-p (0: off).", ge=0.0, le=1.0)
    repeat_penalty: float = option(1.0, "Default repeat penalty (1: off).", gt=0.0)
    repeat_last_n: int = option(64, "Tokens the penalties look back over (-1: all).", ge=-1)
    # HTTP
    host: str = option("127.0.0.1", "Address to bind.", env=("LLAMA_ARG_HOST",))
    port: int = option(8080, "Port to listen on.", env=("LLAMA_ARG_PORT",), ge=0, le=65535)
    api_key: list[str] = option(
        default_factory=list,
        description="Accepted API key (repeatable; comma-separated in the environment).",
        env=("LLAMA_ARG_API_KEY",),
        secret=True,
        metavar="KEY",
    )
    api_key_file: Path | None = option(
        None, "File with one accepted API key per line.", env=("LLAMA_ARG_API_KEY_FILE",), metavar="FILE"
    )
    cors_origin: list[str] = option(
        default_factory=list,
        description="Origin allowed to call the API from a browser (repeatable; '*' for any). Default: none.",
        metavar="ORIGIN",
    )
    max_body_bytes: int = option(8 << 20, "Largest accepted request body in bytes.", ge=1024)
    # Connection limits: request head size, timeouts and the connection cap (docs/security.md)
    max_header_bytes: int = connections.MAX_HEADER_BYTES
    max_header_line_bytes: int = connections.MAX_HEADER_LINE_BYTES
    header_timeout: float = connections.HEADER_TIMEOUT
    body_timeout: float = connections.BODY_TIMEOUT
    keepalive_timeout: float = option(
        5.0, "Seconds an idle keep-alive connection stays open between requests.", gt=0
    )
    max_connections: int = option(
        0,
        "Open client connections at most (0: sized below the descriptor limit, at most 4096). At the cap"
        " the oldest idle connection is closed; when none is idle a new one gets 503.",
        ge=0,
    )
    shutdown_timeout: float = option(
        15.0, "Seconds in-flight requests get to finish on SIGTERM before they are cancelled.", ge=0
    )
    metrics: bool = option(True, "Serve Prometheus metrics at /metrics.", env=("LLAMA_ARG_ENDPOINT_METRICS",))
    metrics_auth: bool = option(
        True,
        "Require the API key on /metrics when --api-key is set (--no-metrics-auth: open, for a scraper"
        " without the key; /health is always open).",
    )
    ui: bool = option(True, "Serve the web UI at /ui (static pages calling this API; --no-ui: off).")
    log_level: Literal["debug", "info", "warning", "error"] = option("info", "Log verbosity.")
    log_prompts: bool = option(False, "Log prompts and outputs (off by default: they are private).")
    # Fake engine (tests and benchmarks)
    fake_ttft: float = option(0.0, "Fake engine: seconds before the first token.", ge=0)
    fake_itl: float = option(0.0, "Fake engine: seconds between tokens.", ge=0)

    @field_validator("n_gpu_layers")
    @classmethod
    def _all_layers(cls, v: int) -> int:
        return -1 if v >= 999 else v

    @field_validator("flash_attn", mode="before")
    @classmethod
    def _fa_bool(cls, v: object) -> object:
        mapping = {"true": "on", "1": "on", "enabled": "on", "false": "off", "0": "off", "disabled": "off"}
        if isinstance(v, bool):
            return "on" if v else "off"
        return mapping.get(str(v).lower(), v) if isinstance(v, str) else v

    @field_validator("tensor_split", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        # llama-server accepts "3,1" and "3/1"; flags arrive as a list of such strings
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return [p for item in v for p in re.split(r"[,/]", str(item).strip()) if p.strip()]
        return v

    @field_validator("rpc", mode="before")
    @classmethod
    def _rpc_list(cls, v: object) -> object:
        # --rpc a:1,b:2 (llama-server's form) as well as a repeated flag
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return [p.strip() for item in v for p in str(item).split(",") if p.strip()]
        return v

    @model_validator(mode="after")
    def _batches(self) -> ServeSettings:
        if self.ubatch_size > self.batch_size:
            self.__dict__["ubatch_size"] = self.batch_size
        return self

    def all_api_keys(self) -> list[str]:
        """Keys from --api-key and --api-key-file (blank lines and # comments ignored)."""
        keys = list(self.api_key)
        if self.api_key_file is not None:
            from haloserve.errors import ConfigError

            try:
                text = self.api_key_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"--api-key-file: cannot read {self.api_key_file}: {exc.strerror}"
                ) from None
            keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return keys
