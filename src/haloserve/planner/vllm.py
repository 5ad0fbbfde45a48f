"""What ``vllm serve`` needs per node, sized from the weights vLLM loads (not llama.cpp's GGUF quant).

vLLM loads a Hugging Face checkpoint: the repo's 16-bit weights (BF16/FP16), or a quantised repo (AWQ,
GPTQ, FP8) when the user names one, by its quant or by a repo name that says so. Under tensor
parallelism every matrix, the embeddings and the KV heads are sharded ``--tensor-parallel-size`` ways
(KV heads are replicated past their count). ``--gpu-memory-utilization`` is the share of the device's
memory vLLM may take for weights, the profiled activation peak, its runtime and the KV cache; vLLM
refuses to start when the KV cache left over cannot hold one ``--max-model-len`` sequence. So the
fraction is sized as

    per node = weights / TP + KV cache for ctx x slots (vLLM's KV dtype) / TP
               + activations of one profiled batch + a runtime reserve

over the node's GPU budget (the planner's usable memory), rounded up to a hundredth, and a plan whose
fraction exceeds :data:`MAX_UTILIZATION` is refused with the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from haloserve.planner.checkpoints import FORMATS, vllm_format
from haloserve.planner.cluster import TensorParallel, tensor_parallel
from haloserve.planner.quant import kv_type
from haloserve.planner.spec import ModelSpec, Weights
from haloserve.planner.types import MemoryBreakdown, PlanInputs
from haloserve.units import GiB, fmt_bytes

MAX_UTILIZATION = 0.95  # vLLM checks free memory against the fraction at start-up; leave the rest
# vllm serve's default --max-num-batched-tokens on a large-memory device (vLLM V1 engine arguments): the
# profiling run that measures the activation peak pushes this many tokens through the model at once.
BATCHED_TOKENS = 8192
RUNTIME_RESERVE = 2 * GiB  # HIP context, RCCL buffers, HIP graphs, allocator slack (an estimate)
# vLLM's KV cache dtype for the planner's cache type (``--kv-cache-dtype``; "auto" is the model dtype).
KV_DTYPES = {"f16": "auto", "bf16": "auto", "f32": "auto", "q8_0": "fp8"}


def vllm_weights(spec: ModelSpec, fmt: str) -> Weights:
    """Bytes of ``spec`` in checkpoint format ``fmt``, all of it on the GPU (vLLM keeps no host copy)."""
    bits = FORMATS[fmt]
    emb = spec.params_embedding
    head = 0 if spec.tied_embeddings else emb  # an untied output matrix is as big as the embeddings
    linear = spec.params_total - emb - head
    total = round(linear * bits / 8 + (emb + head) * 2)
    expert = round(spec.params_expert * bits / 8)
    # a token reads one row of an untied embedding table, and only the experts it is routed to
    decode = total - (0 if spec.tied_embeddings else emb * 2) - round(expert * (1 - spec.expert_fraction))
    return Weights(
        quant=fmt.upper(),
        total_bytes=total,
        gpu_bytes=total,
        host_bytes=0,
        decode_bytes=decode,
        expert_bytes=expert,
        output_bytes=head * 2,
        exact=False,
        source=f"{spec.params_total:,} parameters, linear layers at {bits:g} bits, embeddings 16-bit",
    )


def kv_bytes(mem: MemoryBreakdown, type_k: str, type_v: str) -> int:
    """vLLM's KV cache for the plan's cells: llama.cpp's K and V bytes at vLLM's one KV dtype.

    vLLM has a single ``--kv-cache-dtype`` for K and V, chosen from ``type_k`` (fp8 for q8_0, else the
    model's 16-bit dtype: vLLM has no 4-bit KV cache).
    """
    vllm_bpv = 1.0 if KV_DTYPES.get(type_k) == "fp8" else 2.0
    k = mem.kv_k_bytes * vllm_bpv / kv_type(type_k).bytes_per_value
    v = mem.kv_v_bytes * vllm_bpv / kv_type(type_v).bytes_per_value
    return round(k + v)


def activation_bytes(spec: ModelSpec, size: int, slots: int, tokens: int = BATCHED_TOKENS) -> int:
    """Peak activations of vLLM's profiling batch on one node: 16-bit hidden states and the sharded
    gate/up projection of ``tokens`` tokens, plus F32 logits for every slot."""
    ffn = max(spec.n_ff, spec.n_expert_used * spec.n_ff_exp + spec.n_ff_shexp)
    per_token = (2 * ffn // size + 4 * spec.n_embd) * 2
    return tokens * per_token + slots * spec.n_vocab * 4


@dataclass(frozen=True)
class VllmPlan:
    """``vllm serve`` on ``tp.size`` nodes: what it loads, what a node needs, the fraction to pass."""

    model: str
    quant: str
    quant_source: str
    weights: Weights
    tp: TensorParallel
    usable_bytes: int
    utilization: float
    fits: bool
    problem: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "model": self.model,
            "quant": self.quant,
            "quant_source": self.quant_source,
            "weights_bytes": self.weights.total_bytes,
            "per_node": self.tp.to_dict(),
            "usable_bytes": self.usable_bytes,
            "gpu_memory_utilization": self.utilization,
            "fits": self.fits,
            "problem": self.problem,
        }


def plan_vllm(
    spec: ModelSpec, inputs: PlanInputs, mem: MemoryBreakdown, usable: int, gguf: Weights | None = None
) -> VllmPlan:
    """Size ``vllm serve`` for the plan's context and slots over ``inputs.nodes`` tensor-parallel nodes.

    ``gguf`` is the planned GGUF file's weights: when the line loads that file (vLLM's GGUF loader), its
    bytes are what vLLM holds, all of them on the GPU.
    """
    ref = inputs.vllm_ref or inputs.model_ref or spec.name
    if gguf is not None and ref.endswith(".gguf") and not inputs.vllm_quant:
        fmt, why = "gguf", f"the GGUF file's {gguf.quant} weights"
        weights = replace(gguf, gpu_bytes=gguf.total_bytes, host_bytes=0)
    else:
        fmt, why = vllm_format(ref, inputs.vllm_quant)
        weights = vllm_weights(spec, fmt)
    size = inputs.nodes
    kv = kv_bytes(mem, inputs.type_k, inputs.type_v)
    tokens = min(BATCHED_TOKENS, max(1, mem.layout.n_ctx))
    act = activation_bytes(spec, size, inputs.parallel, tokens)
    tp = tensor_parallel(spec, weights, kv, mem.recurrent_bytes, act, RUNTIME_RESERVE, size)
    util = max(0.05, math.ceil(tp.per_node_bytes / usable * 100) / 100)
    fits = tp.feasible and util <= MAX_UTILIZATION
    problem = ""
    if not tp.feasible:
        problem = f"vLLM cannot shard {spec.name} {size} ways: {tp.reason}"
    elif not fits:
        where = "per node" if size > 1 else "on the node"
        problem = (
            f"vLLM needs {fmt_bytes(tp.per_node_bytes)} {where} ({fmt.upper()} weights "
            f"{fmt_bytes(tp.weights_bytes)} + KV cache {fmt_bytes(tp.kv_bytes)} for "
            f"{mem.layout.n_ctx:,} tokens + activations and runtime "
            f"{fmt_bytes(tp.per_node_bytes - tp.weights_bytes - tp.kv_bytes)}), "
            f"--gpu-memory-utilization {util:.2f} of {fmt_bytes(usable)}; at most {MAX_UTILIZATION:.2f} "
            f"({fmt_bytes(usable * MAX_UTILIZATION)}) is usable"
        )
    return VllmPlan(ref, fmt, why, weights, tp, usable, util, fits, problem)
