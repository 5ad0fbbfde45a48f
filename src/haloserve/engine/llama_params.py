"""Serve settings -> llama.cpp model and context parameters, and the report of what llama.cpp did with them.

One place maps every ``halo serve`` setting that reaches llama.cpp (including the ``LLAMA_ARG_*`` that
``halo plan`` and ``halo deploy`` emit) onto :class:`ModelParams` and :class:`ContextParams`; the reports
feed the start-up lines and ``/props``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from haloserve.config.serve import ServeSettings

if TYPE_CHECKING:
    from haloserve.engine.llamacpp import ContextParams, LlamaContext, LlamaModel, ModelParams


def rope_freq_scale(s: ServeSettings) -> float:
    """llama-server's rule: --rope-freq-scale as given, else 1/--rope-scale, else 0 (the model's own)."""
    if s.rope_freq_scale:
        return s.rope_freq_scale
    return 1.0 / s.rope_scale if s.rope_scale else 0.0


def model_params(s: ServeSettings, devices: tuple[str, ...] = ()) -> ModelParams:
    """How the model is loaded and where its layers go (``devices``: offload to these, in order)."""
    from haloserve.engine.llamacpp import ModelParams

    return ModelParams(
        n_gpu_layers=s.n_gpu_layers,
        use_mmap=s.mmap,
        mlock=s.mlock,
        repack=s.repack,
        split_mode=s.split_mode,
        main_gpu=s.main_gpu,
        tensor_split=tuple(s.tensor_split),
        numa=s.numa,
        devices=devices,
    )


def context_params(s: ServeSettings, n_ctx_train: int) -> ContextParams:
    """The context: size, batches, KV cache, attention, threads and RoPE/YaRN scaling."""
    from haloserve.engine.llamacpp import ContextParams

    return ContextParams(
        n_ctx=s.ctx_size or n_ctx_train,
        n_seq_max=s.parallel,
        n_batch=max(s.batch_size, s.parallel + 16),
        n_ubatch=s.ubatch_size,
        type_k=s.cache_type_k,
        type_v=s.cache_type_v,
        flash_attn=s.flash_attn,
        n_threads=s.threads,
        n_threads_batch=s.threads_batch,
        poll=s.poll,
        kv_unified=s.kv_unified,
        rope_scaling=s.rope_scaling,
        rope_freq_base=s.rope_freq_base,
        rope_freq_scale=rope_freq_scale(s),
        yarn_orig_ctx=s.yarn_orig_ctx,
        yarn_ext_factor=s.yarn_ext_factor,
        yarn_attn_factor=s.yarn_attn_factor,
        yarn_beta_fast=s.yarn_beta_fast,
        yarn_beta_slow=s.yarn_beta_slow,
        swa_full=s.swa_full,
        offload_kqv=s.kv_offload,
    )


def backend_report(model: LlamaModel, ctx: LlamaContext) -> dict[str, Any]:
    """Devices of this build, layers offloaded, and where the weights and the KV cache live."""
    from haloserve.engine.devices import device_usage, list_devices

    placed = model.placement
    devices = list_devices()
    return {
        "devices": [{**asdict(d), "is_gpu": d.is_gpu} for d in devices],
        # layers per device as llama.cpp's load log assigned them, with each device's buffers and memory
        "device_usage": device_usage(devices, placed, ctx.kv_buffers),
        "n_layers": placed.n_layers,
        "n_gpu_layers": placed.layers_offloaded,
        "layer_devices": placed.layer_devices,
        "weights": placed.weights,
        "kv_cache": ctx.kv_buffers,
        "split_mode": model.params.split_mode,
        "main_gpu": model.params.main_gpu,
        "tensor_split": list(model.params.tensor_split),
        "mlock": model.params.mlock,
        "mmap": model.params.use_mmap,
        "numa": model.params.numa,
    }


def context_report(ctx: LlamaContext) -> dict[str, Any]:
    """The context as built: freq_base/freq_scale as llama.cpp settled them (its log), the rest as passed."""
    p = ctx.params
    return {
        "n_ctx": ctx.n_ctx,
        "n_ctx_seq": ctx.n_ctx_seq,
        "type_k": p.type_k,
        "type_v": p.type_v,
        "flash_attn": p.flash_attn,
        "kv_unified": p.kv_unified,
        "kv_offload": p.offload_kqv,
        "swa_full": p.swa_full,
        "rope_scaling": p.rope_scaling or "model",
        "rope_freq_base": ctx.rope.get("freq_base"),
        "rope_freq_scale": ctx.rope.get("freq_scale"),
        "yarn_orig_ctx": p.yarn_orig_ctx,
        "yarn_ext_factor": p.yarn_ext_factor,
        "yarn_attn_factor": p.yarn_attn_factor,
        "yarn_beta_fast": p.yarn_beta_fast,
        "yarn_beta_slow": p.yarn_beta_slow,
    }
