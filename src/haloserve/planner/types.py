"""The planner's data: what the user asks for and a node's memory.

Here, below :mod:`~haloserve.planner.plan`, :mod:`~haloserve.planner.advice` and
:mod:`~haloserve.planner.vllm`, so that each of them can name these types without importing another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from haloserve.errors import ConfigError
from haloserve.planner.checkpoints import vllm_format
from haloserve.planner.cluster import DEFAULT_LINK_LATENCY
from haloserve.planner.memory import DEFAULT_BATCH, DEFAULT_OVERHEAD, DEFAULT_UBATCH, ContextLayout
from haloserve.planner.quant import kv_type
from haloserve.planner.rpc_launch import check_address
from haloserve.planner.speed import Hardware

MAX_CONTEXT = 1 << 26  # 64M tokens: the search for the largest context stops here


@dataclass(frozen=True)
class PlanInputs:
    """What the user asks for; defaults are llama-server's (``ctx=None`` is the model's trained context)."""

    ctx: int | None = None
    parallel: int = 1
    type_k: str = "f16"
    type_v: str = "f16"
    unified_kv: bool = False
    swa_full: bool = False
    flash_attn: bool = True
    n_ubatch: int = DEFAULT_UBATCH
    n_batch: int = DEFAULT_BATCH
    overhead_bytes: int = DEFAULT_OVERHEAD
    nodes: int = 1
    link_latency: float = DEFAULT_LINK_LATENCY
    hardware: Hardware = field(default_factory=Hardware)
    model_ref: str | None = None
    vllm_ref: str | None = None  # the repo vllm serve loads (default: model_ref)
    vllm_quant: str | None = None  # its checkpoint format (default: from the repo name, else BF16)
    tensor_split: tuple[float, ...] | None = None  # RPC split, workers first then the main node (None: even)
    node_addresses: tuple[str, ...] = ()  # main node first, then the RPC workers (empty: node1..nodeN)

    def __post_init__(self) -> None:
        if self.ctx is not None and self.ctx <= 0:
            raise ConfigError(f"--ctx must be a positive number of tokens (got {self.ctx})")
        if self.ctx is not None and self.ctx > MAX_CONTEXT:
            raise ConfigError(f"--ctx {self.ctx} is beyond any model's reach (limit {MAX_CONTEXT})")
        if not 1 <= self.parallel <= 256:
            raise ConfigError(f"--parallel must be between 1 and 256 (got {self.parallel})")
        if not 1 <= self.nodes <= 64:
            raise ConfigError(f"--nodes must be between 1 and 64 (got {self.nodes})")
        if self.tensor_split is not None and (
            len(self.tensor_split) != self.nodes or any(x <= 0 for x in self.tensor_split)
        ):
            raise ConfigError(f"a tensor split needs {self.nodes} positive values (got {self.tensor_split})")
        if self.node_addresses and len(self.node_addresses) != self.nodes:
            raise ConfigError(
                f"--node-address gives {len(self.node_addresses)} address(es) for {self.nodes} node(s): "
                "give one per node, the main node first"
            )
        for i, address in enumerate(self.node_addresses):
            check_address(address, worker=i > 0)
        kv_type(self.type_k)
        kv_type(self.type_v)
        vllm_format(self.vllm_ref, self.vllm_quant)  # a GGUF quant named for vLLM is refused here
        if not self.flash_attn and kv_type(self.type_v).block_size > 1:
            raise ConfigError("a quantised V cache needs flash attention in llama.cpp (drop --no-flash-attn)")


@dataclass(frozen=True)
class MemoryBreakdown:
    """GPU memory of a plan on one node, and what stays in system RAM."""

    weights_bytes: int
    kv_cache_bytes: int
    kv_k_bytes: int
    kv_v_bytes: int
    recurrent_bytes: int
    compute_buffer_bytes: int
    overhead_bytes: int
    host_bytes: int
    layout: ContextLayout

    @property
    def total_bytes(self) -> int:
        """Everything the GPU needs."""
        return (
            self.weights_bytes
            + self.kv_cache_bytes
            + self.recurrent_bytes
            + self.compute_buffer_bytes
            + self.overhead_bytes
        )
