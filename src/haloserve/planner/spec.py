"""What the planner knows about a model: its shape (:class:`ModelSpec`) and its weights (:class:`Weights`).

A spec comes from one of three sources (``gguf_source``, ``hf_source``, ``catalog``) and is plain,
immutable data; every estimate in the planner is a pure function of it. Conventions:

* ``n_head_kv`` is per layer, and 0 marks a layer without a KV cache (a recurrent / linear-attention
  layer in hybrid models such as Qwen3-Next, or a multi-token-prediction layer the trunk never attends).
* ``swa_layers`` is per layer: ``True`` where the layer only attends the last ``sliding_window`` tokens.
* ``params_active`` counts the parameters read for one token: everything except the input embedding
  table (one row is read) and the routed experts that are not selected. This is the figure that sets
  decode speed; model cards sometimes count differently, and catalog entries cite theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from haloserve.errors import ConfigError

F32_BYTES = 4


@dataclass(frozen=True)
class RecurrentState:
    """Fixed-size state of recurrent (SSM / gated-delta-net) layers, stored by llama.cpp in F32.

    ``conv_values`` and ``state_values`` are llama.cpp's ``n_embd_r()`` and ``n_embd_s()`` per layer;
    llama.cpp keeps one copy per sequence (``max(1, n_seq_max)`` cells).
    """

    n_layers: int
    conv_values: int
    state_values: int

    def bytes_per_sequence(self) -> int:
        """F32 bytes of the whole state of one sequence across every recurrent layer."""
        return self.n_layers * (self.conv_values + self.state_values) * F32_BYTES


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"model metadata: {name} must be a positive integer (got {value!r})")


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only model, as far as memory and speed planning needs it."""

    name: str
    architecture: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_head: int
    n_head_kv: tuple[int, ...]
    head_dim_k: int
    head_dim_v: int
    ctx_train: int
    params_total: int
    params_embedding: int
    params_expert: int = 0
    n_ff: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    sliding_window: int = 0
    swa_layers: tuple[bool, ...] = ()
    recurrent: RecurrentState | None = None
    ctx_native: int | None = None
    rope_theta: float | None = None
    tied_embeddings: bool = False
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_vocab", "n_head", "head_dim_k", "head_dim_v", "ctx_train"):
            _positive(name, getattr(self, name))
        if len(self.n_head_kv) != self.n_layer:
            raise ConfigError(
                f"model metadata: {len(self.n_head_kv)} KV head counts for {self.n_layer} layers"
            )
        if any(h < 0 for h in self.n_head_kv):
            raise ConfigError("model metadata: negative KV head count")
        if self.swa_layers and len(self.swa_layers) != self.n_layer:
            raise ConfigError(
                f"model metadata: {len(self.swa_layers)} sliding-window flags for {self.n_layer} layers"
            )
        if any(self.swa_layers) and self.sliding_window <= 0:
            raise ConfigError("model metadata: sliding-window layers without a window size")
        if self.n_expert and not 0 < self.n_expert_used <= self.n_expert:
            raise ConfigError(
                f"model metadata: {self.n_expert_used} experts used per token out of {self.n_expert}"
            )
        if self.params_total <= 0 or not 0 <= self.params_expert <= self.params_total:
            raise ConfigError("model metadata: inconsistent parameter counts")

    @property
    def is_moe(self) -> bool:
        """True for a mixture-of-experts model."""
        return self.n_expert > 1

    @property
    def expert_fraction(self) -> float:
        """Share of routed experts one token uses (``n_expert_used / n_expert``; 1 for dense models)."""
        return self.n_expert_used / self.n_expert if self.is_moe else 1.0

    @property
    def params_active(self) -> int:
        """Parameters read per generated token (see the module docstring for the convention)."""
        unused_experts = round(self.params_expert * (1 - self.expert_fraction))
        embedding = 0 if self.tied_embeddings else self.params_embedding
        return self.params_total - unused_experts - embedding

    def is_swa(self, il: int) -> bool:
        """True when layer ``il`` is a sliding-window layer."""
        return bool(self.swa_layers) and self.swa_layers[il]

    def kv_layers(self) -> list[int]:
        """Indices of the layers that hold a KV cache."""
        return [il for il, h in enumerate(self.n_head_kv) if h > 0]

    def n_embd_k_gqa(self, il: int) -> int:
        """K values per token in layer ``il`` (``n_head_kv x head_dim_k``)."""
        return self.n_head_kv[il] * self.head_dim_k

    def n_embd_v_gqa(self, il: int) -> int:
        """V values per token in layer ``il`` (``n_head_kv x head_dim_v``)."""
        return self.n_head_kv[il] * self.head_dim_v

    def summary(self) -> dict[str, object]:
        """The spec as plain data for ``--json`` output."""
        kv = self.kv_layers()
        swa = [il for il in kv if self.is_swa(il)]
        return {
            "name": self.name,
            "architecture": self.architecture,
            "layers": self.n_layer,
            "kv_layers": len(kv),
            "sliding_window_layers": len(swa),
            "sliding_window": self.sliding_window,
            "recurrent_layers": self.recurrent.n_layers if self.recurrent else 0,
            "attention_heads": self.n_head,
            "kv_heads": sorted(set(self.n_head_kv[il] for il in kv)),
            "head_dim": self.head_dim_k,
            "experts": self.n_expert,
            "experts_used": self.n_expert_used,
            "params_total": self.params_total,
            "params_active": self.params_active,
            "trained_context": self.ctx_train,
            "native_context": self.ctx_native,
            "source": self.source,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Weights:
    """How many bytes the weights take and where they live once llama.cpp loads them on the GPU.

    llama.cpp always keeps the token-embedding table in system memory (``llama-model.cpp``: "the input
    layer is always on the CPU") and, for tied embeddings, loads a second copy as the output matrix on the
    GPU. ``decode_bytes`` is what one generated token reads at batch 1: every GPU tensor except the
    routed experts the token does not use. ``output_bytes`` is the output (unembedding) matrix.
    """

    quant: str
    total_bytes: int
    gpu_bytes: int
    host_bytes: int
    decode_bytes: int
    expert_bytes: int
    output_bytes: int
    exact: bool
    source: str

    def read_bytes(self, batch: int, spec: ModelSpec) -> float:
        """Weight bytes read by one decode step of ``batch`` sequences.

        Dense weights are read once per step. A token touches ``k`` of ``n`` experts per layer, so a batch
        touches ``n x (1 - (1 - k/n)^batch)`` of them on average (independent routing assumed).
        """
        batch = max(1, batch)
        if not spec.is_moe or self.expert_bytes == 0:
            return float(self.decode_bytes)
        frac = spec.expert_fraction
        shared = self.decode_bytes - self.expert_bytes * frac
        touched = 1 - (1 - frac) ** batch
        return shared + self.expert_bytes * touched
