"""Weight sizes for a chosen quantisation when the exact tensor sizes are unknown (config or catalog).

``parameters x bits per weight / 8``, split the way llama.cpp places tensors: the input embedding table
in system memory, everything else (plus a copy of a tied embedding used as the output matrix) on the GPU.
Routed experts use the quantisation's expert bit width (they differ for ``MXFP4_MOE``).
"""

from __future__ import annotations

from haloserve.planner.quant import file_quant
from haloserve.planner.spec import ModelSpec, Weights


def estimate_weights(spec: ModelSpec, quant: str) -> Weights:
    """Estimated :class:`Weights` of ``spec`` quantised as ``quant`` (``Q4_K_M``, ``Q8_0``, ``BF16`` ...)."""
    fq = file_quant(quant)
    expert = spec.params_expert * fq.expert_bits / 8
    other = (spec.params_total - spec.params_expert) * fq.bits_per_weight / 8
    embedding = spec.params_embedding * fq.bits_per_weight / 8
    total = other + expert
    gpu = total - embedding + (embedding if spec.tied_embeddings else 0)
    decode = gpu - expert * (1 - spec.expert_fraction)
    return Weights(
        quant=fq.name,
        total_bytes=round(total),
        gpu_bytes=round(gpu),
        host_bytes=round(embedding),
        decode_bytes=round(decode),
        expert_bytes=round(expert),
        output_bytes=round(embedding),
        exact=False,
        source=f"{spec.params_total:,} parameters x {fq.bits_per_weight:g} bits ({fq.source})",
    )
