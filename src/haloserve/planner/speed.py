"""Speed estimates: decode is bound by memory bandwidth, prefill by compute.

* **Decode ceiling** = bandwidth / bytes read per token. A token reads every GPU weight it uses (MoE:
  the shared tensors plus the selected experts; batches of slots share reads, see
  :meth:`Weights.read_bytes`) and the KV cache up to its position (sliding-window layers read their
  window). The *ceiling* uses the theoretical bandwidth (LPDDR5X-8000 on a 256-bit bus: 256 GB/s).
* **Realistic decode** uses the bandwidth a GPU kernel actually reaches (~215 GB/s; ``rocm_bandwidth_test``
  measures about 212 GB/s on Strix Halo) times a kernel efficiency: 0.85 for dense models, 0.55 for
  MoE (expert routing and small matmuls). The efficiencies are rough calibrations against published
  ``llama-bench`` tg128 results on Strix Halo (e.g. ~50 t/s for Llama-2-7B Q4_0), not measurements of
  your machine; override them with flags.
* **Prefill** costs ``2 x active parameters`` FLOPs per token plus attention
  (``2 x n_head x (d_k + d_v)`` per token of context in full layers). Its *ceiling* uses the 59.4 TFLOPS
  FP16 peak (40 CUs x 2.9 GHz x 512 FLOPs/clock); the realistic figure applies 0.25 (dense) or 0.10
  (MoE) efficiency, again a rough calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haloserve.errors import ConfigError
from haloserve.planner.memory import kv_read_bytes
from haloserve.planner.spec import ModelSpec, Weights

PP_TOKENS = 512  # prompt length of the prefill figure, as llama-bench's pp512


@dataclass(frozen=True)
class Hardware:
    """Per-node performance figures; defaults are Strix Halo's (see the module docstring)."""

    bandwidth_peak: float = 256e9
    bandwidth_achievable: float = 215e9
    flops_peak: float = 59.4e12
    decode_efficiency_dense: float = 0.85
    decode_efficiency_moe: float = 0.55
    prefill_efficiency_dense: float = 0.25
    prefill_efficiency_moe: float = 0.10

    def __post_init__(self) -> None:
        if min(self.bandwidth_peak, self.bandwidth_achievable, self.flops_peak) <= 0:
            raise ConfigError("bandwidth and FLOPS must be positive")
        if self.bandwidth_achievable > self.bandwidth_peak:
            raise ConfigError("achievable bandwidth cannot exceed the theoretical bandwidth")
        effs = (
            self.decode_efficiency_dense,
            self.decode_efficiency_moe,
            self.prefill_efficiency_dense,
            self.prefill_efficiency_moe,
        )
        if any(not 0 < e <= 1 for e in effs):
            raise ConfigError("efficiencies must be in (0, 1]")

    def decode_efficiency(self, spec: ModelSpec) -> float:
        """Kernel efficiency of decode for this kind of model."""
        return self.decode_efficiency_moe if spec.is_moe else self.decode_efficiency_dense

    def prefill_efficiency(self, spec: ModelSpec) -> float:
        """Kernel efficiency of prefill for this kind of model."""
        return self.prefill_efficiency_moe if spec.is_moe else self.prefill_efficiency_dense


@dataclass(frozen=True)
class SpeedEstimate:
    """Decode and prefill rates; ``*_ceiling`` are upper bounds, ``*_realistic`` expectations."""

    decode_bytes_per_token: float
    decode_tokens_per_s_ceiling: float
    decode_tokens_per_s_realistic: float
    decode_tokens_per_s_ceiling_empty: float
    decode_tokens_per_s_realistic_empty: float
    aggregate_tokens_per_s_ceiling: float
    aggregate_tokens_per_s_realistic: float
    prefill_tokens_per_s_ceiling: float
    prefill_tokens_per_s_realistic: float
    full_prompt_seconds_realistic: float
    context_per_slot: int
    slots: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` (rates rounded to 0.1 token/s)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = round(value, 1) if isinstance(value, float) else value
        return out


def prompt_flops(spec: ModelSpec, tokens: int) -> float:
    """FLOPs to prefill a prompt of ``tokens`` tokens (matmuls plus causal attention)."""
    matmul = 2.0 * spec.params_active * tokens
    per_cell = 2 * spec.n_head * (spec.head_dim_k + spec.head_dim_v)
    attn = 0.0
    for il in spec.kv_layers():
        if spec.is_swa(il) and tokens > spec.sliding_window:
            w = spec.sliding_window
            attn += per_cell * (w * (w - 1) / 2 + (tokens - w) * w)
        else:
            attn += per_cell * tokens * (tokens - 1) / 2
    return matmul + attn


def estimate_speed(
    spec: ModelSpec,
    weights: Weights,
    context_per_slot: int,
    slots: int = 1,
    type_k: str = "f16",
    type_v: str | None = None,
    hardware: Hardware | None = None,
) -> SpeedEstimate:
    """Decode and prefill estimates for ``slots`` sequences of ``context_per_slot`` tokens on one node."""
    hw = hardware or Hardware()
    slots = max(1, slots)
    kv_full = kv_read_bytes(spec, context_per_slot, type_k, type_v)
    one = weights.read_bytes(1, spec)
    per_token = one + kv_full
    eff = hw.decode_efficiency(spec)
    batch_bytes = weights.read_bytes(slots, spec) + slots * kv_full
    pp = prompt_flops(spec, PP_TOKENS) / PP_TOKENS
    full_prompt = prompt_flops(spec, context_per_slot)
    pp_eff = hw.prefill_efficiency(spec)
    return SpeedEstimate(
        decode_bytes_per_token=per_token,
        decode_tokens_per_s_ceiling=hw.bandwidth_peak / per_token,
        decode_tokens_per_s_realistic=hw.bandwidth_achievable * eff / per_token,
        decode_tokens_per_s_ceiling_empty=hw.bandwidth_peak / one,
        decode_tokens_per_s_realistic_empty=hw.bandwidth_achievable * eff / one,
        aggregate_tokens_per_s_ceiling=slots * hw.bandwidth_peak / batch_bytes,
        aggregate_tokens_per_s_realistic=slots * hw.bandwidth_achievable * eff / batch_bytes,
        prefill_tokens_per_s_ceiling=hw.flops_peak / pp,
        prefill_tokens_per_s_realistic=hw.flops_peak * pp_eff / pp,
        full_prompt_seconds_realistic=full_prompt / (hw.flops_peak * pp_eff),
        context_per_slot=context_per_slot,
        slots=slots,
    )
