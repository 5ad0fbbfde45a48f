"""Splitting a model over several nodes: llama.cpp's RPC layer split and vLLM's tensor parallelism.

* **llama.cpp RPC** (``--rpc host:port,...``) places whole layers on each device. With an even
  ``--tensor-split`` llama.cpp gives layer ``il`` to device ``il x N / (n_layer + 1)`` and the output
  layer to the last one (``llama-model.cpp``, ``load_tensors``); an uneven split gives layer ``il`` to
  the first device whose cumulative share exceeds ``il / (n_layer + 1)``. llama.cpp lists the RPC
  devices first, in ``--rpc`` order, and the local GPU last (``llama.cpp``, "add RPC servers at the
  front"), so shares and ``--tensor-split`` go workers first and the main node, which holds the output
  layer, last. Each device holds its layers' weights and KV cache, and reserves its own compute buffer.
  Layers run one after another, so decode is no faster than on one node and each token pays the network
  latency of every hop.
* **vLLM tensor parallelism** (``--tensor-parallel-size N``) shards every matrix N ways, embeddings
  included, and the KV heads (replicated when N exceeds the KV head count). It needs the attention
  heads to divide by N. Decode reads 1/N of the bytes per node but pays two all-reduces per layer.

Per-layer weight bytes are taken as equal (the layers of the supported models are uniform, or nearly).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from haloserve.errors import ConfigError
from haloserve.planner.spec import ModelSpec, Weights
from haloserve.units import GiB

MAX_NODES = 64
DEFAULT_LINK_LATENCY = 50e-6  # seconds per network hop or all-reduce step (TCP over Ethernet)


def _f32(x: float) -> float:
    """``x`` rounded to a C float, as llama.cpp computes its split points."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


def _even(split: Sequence[float] | None) -> bool:
    return split is None or len(set(split)) <= 1


def layer_owner(il: int, n_layer: int, n_nodes: int, split: Sequence[float] | None = None) -> int:
    """0-based device that holds layer ``il`` (``il == n_layer`` is the output layer).

    ``split`` is ``--tensor-split`` (one proportion per device); ``None`` or equal values split evenly.
    """
    if _even(split):
        return il * n_nodes // (n_layer + 1)
    assert split is not None and len(split) == n_nodes
    points, total = [], 0.0
    for share in split:  # llama.cpp: cumulative sums in float, then normalised (std::upper_bound)
        total = _f32(total + share)
        points.append(total)
    points = [_f32(p / total) for p in points]
    return min(n_nodes - 1, bisect.bisect_right(points, _f32(il / (n_layer + 1))))


def tensor_split_for(usable_bytes: Sequence[int]) -> tuple[float, ...]:
    """``--tensor-split`` proportional to each device's usable GPU memory (GiB to 0.1), in device order.

    Equal nodes give ``1,1,...``. The budgets come from :func:`haloserve.planner.budget.tuned_budget`
    (or the node's own budget), so the split follows the same memory the fit check uses.
    """
    gib = [round(b / GiB, 1) for b in usable_bytes]
    if len(set(gib)) <= 1:
        return tuple(1.0 for _ in gib)
    return tuple(gib)


def format_split(split: Sequence[float]) -> str:
    """``--tensor-split`` as llama.cpp and ``halo serve`` read it: ``1,1`` or ``120,56``."""
    return ",".join(f"{s:g}" for s in split)


@dataclass(frozen=True)
class NodeShare:
    """What one node holds in an RPC layer split."""

    node: int
    first_layer: int
    last_layer: int
    holds_output: bool
    weights_bytes: int
    kv_bytes: int
    recurrent_bytes: int
    compute_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        """Everything this node allocates on its GPU."""
        return (
            self.weights_bytes
            + self.kv_bytes
            + self.recurrent_bytes
            + self.compute_bytes
            + self.overhead_bytes
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {**self.__dict__, "total_bytes": self.total_bytes}


def rpc_split(
    spec: ModelSpec,
    weights: Weights,
    kv_per_layer: list[int],
    recurrent_bytes: int,
    compute_bytes: int,
    overhead_bytes: int,
    n_nodes: int,
    split: Sequence[float] | None = None,
) -> list[NodeShare]:
    """Per-device memory of a llama.cpp RPC split over ``n_nodes`` nodes (even unless ``split`` is given).

    Device order is llama.cpp's: the workers in ``--rpc`` order, then the main node (the last share).
    """
    per_layer = (weights.gpu_bytes - weights.output_bytes) / spec.n_layer
    recurrent_layers = spec.recurrent.n_layers if spec.recurrent else 0
    shares = []
    for node in range(n_nodes):
        layers = [il for il in range(spec.n_layer) if layer_owner(il, spec.n_layer, n_nodes, split) == node]
        holds_output = layer_owner(spec.n_layer, spec.n_layer, n_nodes, split) == node
        n_recurrent = sum(1 for il in layers if spec.n_head_kv[il] == 0) if recurrent_layers else 0
        shares.append(
            NodeShare(
                node=node + 1,
                first_layer=layers[0] if layers else -1,
                last_layer=layers[-1] if layers else -1,
                holds_output=holds_output,
                weights_bytes=round(per_layer * len(layers)) + (weights.output_bytes if holds_output else 0),
                kv_bytes=sum(kv_per_layer[il] for il in layers),
                recurrent_bytes=recurrent_bytes * n_recurrent // recurrent_layers if recurrent_layers else 0,
                compute_bytes=compute_bytes,
                overhead_bytes=overhead_bytes,
            )
        )
    return shares


@dataclass(frozen=True)
class TensorParallel:
    """vLLM tensor parallelism over ``size`` nodes: feasibility and memory per node."""

    size: int
    feasible: bool
    reason: str
    weights_bytes: int
    kv_bytes: int
    per_node_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return dict(self.__dict__)


def tensor_parallel(
    spec: ModelSpec,
    weights: Weights,
    kv_bytes: int,
    recurrent_bytes: int,
    compute_bytes: int,
    overhead_bytes: int,
    size: int,
) -> TensorParallel:
    """Memory per node when vLLM shards the model ``size`` ways (feasible only if the heads divide)."""
    kv_heads = max(spec.n_head_kv)
    reasons = []
    if spec.n_head % size:
        reasons.append(f"{spec.n_head} attention heads do not divide by {size}")
    if kv_heads and size > 1 and kv_heads % size and size % kv_heads:
        reasons.append(f"{kv_heads} KV heads neither divide by nor divide {size}")
    kv_share = max(1 / size, 1 / kv_heads) if kv_heads else 1 / size
    w = round(weights.total_bytes / size)
    kv = round(kv_bytes * kv_share)
    return TensorParallel(
        size=size,
        feasible=not reasons,
        reason="; ".join(reasons) or "heads divide evenly",
        weights_bytes=w,
        kv_bytes=kv,
        per_node_bytes=w + kv + recurrent_bytes // size + compute_bytes + overhead_bytes,
    )


@dataclass(frozen=True)
class ClusterPlan:
    """How ``nodes`` nodes would share the model, with both engines."""

    nodes: int
    rpc: tuple[NodeShare, ...]
    rpc_fits: bool
    tensor_split: str
    tp: TensorParallel
    tp_fits: bool
    rpc_decode_tokens_per_s_ceiling: float
    tp_decode_tokens_per_s_ceiling: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "nodes": self.nodes,
            "rpc": [s.to_dict() for s in self.rpc],
            "rpc_fits": self.rpc_fits,
            "tensor_split": self.tensor_split,
            "tensor_parallel": self.tp.to_dict(),
            "tp_fits": self.tp_fits,
            "rpc_decode_tokens_per_s_ceiling": round(self.rpc_decode_tokens_per_s_ceiling, 1),
            "tp_decode_tokens_per_s_ceiling": round(self.tp_decode_tokens_per_s_ceiling, 1),
        }


def plan_cluster(
    spec: ModelSpec,
    weights: Weights,
    kv_per_layer: list[int],
    recurrent_bytes: int,
    compute_bytes: int,
    overhead_bytes: int,
    usable_bytes: int,
    n_nodes: int,
    decode_bytes_per_token: float,
    bandwidth: float,
    tp: TensorParallel,
    tp_fits: bool,
    tp_decode_bytes_per_token: float,
    link_latency: float = DEFAULT_LINK_LATENCY,
    split: Sequence[float] | None = None,
) -> ClusterPlan:
    """Both splits over ``n_nodes`` equal nodes, and their decode ceilings including network latency.

    ``tp`` is vLLM's split as :func:`haloserve.planner.vllm.plan_vllm` sized it from the weights vLLM
    loads (``tp_decode_bytes_per_token`` is what one of its tokens reads); the RPC split uses ``weights``
    and ``split`` (``--tensor-split`` in device order, workers first; ``None``: even).
    """
    # equal nodes unless the caller knows each node's budget (halo deploy): the same rule either way
    split = tuple(split) if split is not None else tensor_split_for([usable_bytes] * n_nodes)
    if len(split) != n_nodes:
        raise ConfigError(f"a tensor split of {len(split)} values for {n_nodes} nodes")
    shares = rpc_split(
        spec, weights, kv_per_layer, recurrent_bytes, compute_bytes, overhead_bytes, n_nodes, split
    )
    rpc_time = decode_bytes_per_token / bandwidth + 2 * (n_nodes - 1) * link_latency
    tp_time = tp_decode_bytes_per_token / (bandwidth * n_nodes) + (
        2 * spec.n_layer * link_latency if n_nodes > 1 else 0
    )
    return ClusterPlan(
        nodes=n_nodes,
        rpc=tuple(shares),
        rpc_fits=all(s.total_bytes <= usable_bytes for s in shares),
        tensor_split=format_split(split),
        tp=tp,
        tp_fits=tp_fits,
        rpc_decode_tokens_per_s_ceiling=1 / rpc_time,
        tp_decode_tokens_per_s_ceiling=1 / tp_time,
    )


def nodes_needed(
    spec: ModelSpec,
    weights: Weights,
    kv_per_layer: list[int],
    recurrent_bytes: int,
    compute_bytes: int,
    overhead_bytes: int,
    usable_bytes: int,
) -> int | None:
    """Fewest equal nodes whose RPC layer split fits (``None`` if even ``MAX_NODES`` do not)."""
    for n in range(1, min(MAX_NODES, spec.n_layer + 1) + 1):
        shares = rpc_split(spec, weights, kv_per_layer, recurrent_bytes, compute_bytes, overhead_bytes, n)
        if all(s.total_bytes <= usable_bytes for s in shares):
            return n
    return None
