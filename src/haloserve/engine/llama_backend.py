"""The llama.cpp :class:`~haloserve.engine.backend.Backend`: one model, one context, one reusable batch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from haloserve.config.serve import ServeSettings
from haloserve.engine.backend import Span
from haloserve.engine.base import EngineInfo, SamplingParams
from haloserve.engine.llama_params import backend_report, context_params, context_report, model_params
from haloserve.engine.llamacpp import Batch, LlamaContext, LlamaModel, uses_openmp
from haloserve.engine.sampling import Sampler, offloadable

log = logging.getLogger("haloserve.engine")


class LlamaBackend:
    """Loads the model and context of ``settings`` (blocking) and runs batches on them."""

    def __init__(self, settings: ServeSettings, model_path: Path, devices: tuple[str, ...] = ()) -> None:
        s = settings
        self.model = LlamaModel(model_path, model_params(s, devices))
        ctx: LlamaContext | None = None
        try:
            ctx = LlamaContext(self.model, context_params(s, self.model.n_ctx_train))
            self._batch = Batch(ctx.n_batch)
            ctx.warmup(self._batch)
        except BaseException:  # nothing half-loaded outlives a failed start
            if ctx is not None:
                ctx.close()
            self.model.close()
            raise
        self.ctx = ctx
        model = self.model
        placed = model.placement
        # auto: the graph samples when the output layer (the logits) lives on a GPU; on the CPU the
        # arg-max path is cheaper (BENCHMARKS.md, "Per-step CPU cost")
        on_gpu = placed.n_layers > 0 and placed.layers_offloaded >= placed.n_layers
        self.backend_sampling = s.backend_sampling == "on" or (s.backend_sampling == "auto" and on_gpu)
        self.eog_tokens = model.eog_tokens
        self.n_batch = self._batch.capacity
        self.n_ubatch = ctx.n_ubatch
        self.info = EngineInfo(
            model_path=str(model_path),
            n_ctx=ctx.n_ctx,
            n_ctx_slot=ctx.n_ctx // s.parallel if s.kv_unified else ctx.n_ctx_seq,
            n_parallel=s.parallel,
            n_vocab=model.n_vocab,
            n_ctx_train=model.n_ctx_train,
            kv_cache_bytes=ctx.kv_cache_bytes,
            description=model.description,
            extra={
                "n_batch": ctx.n_batch,
                "n_ubatch": ctx.n_ubatch,
                "threads": ctx.n_threads,
                "backend": backend_report(model, ctx),
                "context": context_report(ctx),
                "backend_sampling": self.backend_sampling,
            },
            features=frozenset({"grammar", "logprobs"}),
        )
        if uses_openmp() and ctx.n_threads > 1:
            log.warning(
                "llama-cpp-python was built with OpenMP: decoding on halo's engine thread can be several"
                " times slower (libgomp throttles threads that are not the main thread); rebuild it with"
                " CMAKE_ARGS=-DGGML_OPENMP=OFF (see docs/serve.md)"
            )

    @property
    def tokenizer(self) -> LlamaModel:
        """The model (it tokenises, detokenises and holds the vocabulary the grammar code reads)."""
        return self.model

    @property
    def chat_template(self) -> str | None:
        """The chat template stored in the GGUF."""
        return self.model.chat_template

    def decode(self, spans: Sequence[Span]) -> int:
        """Fill the batch with ``spans`` and run ``llama_decode`` on it."""
        batch = self._batch
        batch.clear()
        for tokens, pos, seq, logits in spans:
            batch.add(tokens, pos, seq, logits)
        return self.ctx.decode(batch)

    def logits(self, idx: int) -> np.ndarray:
        """The context's logits row at batch index ``idx`` (a view: writes reach the sampler)."""
        return self.ctx.logits(idx)

    def sampler(
        self, params: SamplingParams, prompt_tail: Sequence[int], *, seq: int = -1, cpu_only: bool = False
    ) -> Sampler:
        """A llama.cpp sampler chain for one request, run in the graph of ``seq`` when it may be."""
        m = self.model
        smp = Sampler(params, n_vocab=m.n_vocab, eog_tokens=m.eog_tokens, prompt_tail=prompt_tail)
        if self.backend_sampling and seq >= 0 and not cpu_only and offloadable(params):
            smp.attach(self.ctx.ptr, seq)  # refused (a sampler llama.cpp cannot offload): the CPU samples
        return smp

    def sample(self, sampler: Any, idx: int, n_generated: int) -> int:
        """Sample from the context's row at ``idx`` (or take the token the graph sampled)."""
        if sampler.argmax and sampler.attached is None:
            return sampler.argmax_row(self.ctx.logits(idx), n_generated)
        return sampler.sample(self.ctx.ptr, idx, n_generated)

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Drop positions of ``seq`` from the KV cache."""
        return self.ctx.seq_rm(seq, p0, p1)

    def piece(self, token: int, special: bool = False) -> bytes:
        """The model's (cached) token piece."""
        return self.model.piece(token, special)

    def close(self) -> None:
        """Free the context, then the model."""
        self.ctx.close()
        self.model.close()
