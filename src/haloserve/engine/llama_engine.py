"""The embedded llama.cpp engine: continuous batching over one shared context, in its own thread.

Every step the compute thread (1) takes new requests and cancellations from its inbox, (2) admits
waiting requests into free slots, reusing the longest cached prompt prefix, (3) builds one batch with a
token for every decoding sequence followed by prompt chunks, (4) calls ``llama_decode`` once, and
(5) samples, detokenises and checks stop conditions for every sequence that produced logits, handing
the outputs to the event loop in one call.

Grammar-constrained sequences need a token mask before they can sample. The masks of a step are computed
in a worker thread while ``llama_decode`` runs (both release the GIL), so a constrained sequence costs
the batch only the time its mask takes beyond the decode, which the engine counts in its stats.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from haloserve.config.serve import ServeSettings
from haloserve.engine.base import EngineInfo, EngineStats, GenerationRequest, Output, TokenLogprob
from haloserve.engine.bridge import RequestStream, deliver
from haloserve.engine.llama_params import backend_report, context_params, context_report, model_params
from haloserve.engine.logits import logprobs_of
from haloserve.engine.slots import Slot, choose_slot, plan_prefill
from haloserve.engine.textstream import TextStream
from haloserve.errors import QueueFullError, ServiceUnavailableError

log = logging.getLogger("haloserve.engine")


class Job:
    """Engine-thread state of one request."""

    __slots__ = (
        "cached",
        "generated",
        "n_past",
        "pending",
        "prompt",
        "req",
        "sampler",
        "slot",
        "stream",
        "t_admit",
        "text",
    )

    def __init__(self, req: GenerationRequest, stream: RequestStream) -> None:
        self.req = req
        self.stream = stream
        self.prompt = req.prompt_tokens
        self.slot: Slot | None = None
        self.sampler: Any = None
        self.text = TextStream(req.stop)
        self.n_past = 0
        self.cached = 0
        self.generated = 0
        self.pending: int | None = None  # sampled token not yet in the KV cache
        self.t_admit = 0.0

    def output(
        self,
        text: str,
        token: int | None,
        finish: Any = None,
        error: str | None = None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> Output:
        """An output event carrying the usage so far."""
        return Output(
            text=text,
            token_ids=[] if token is None else [token],
            finish_reason=finish,
            prompt_tokens=len(self.prompt),
            completion_tokens=self.generated,
            cached_tokens=self.cached,
            error=error,
            logprobs=logprobs,
        )


class LlamaEngine:
    """Continuous-batching engine over llama-cpp-python's low-level API."""

    def __init__(self, settings: ServeSettings, model_path: Path) -> None:
        self.settings = settings
        self.model_path = model_path
        self._info: EngineInfo | None = None
        self._model: Any = None
        self._ctx: Any = None
        self._ready = False
        self._stopping = False
        self._inbox: deque[Job] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._waiting: deque[Job] = deque()
        self._slots: list[Slot] = []
        self._active: list[Job] = []
        self._n_submitted = 0
        self._n_taken = 0
        self._tick = 0  # slot-use clock (least recently used caches are overwritten first)
        self._stats = EngineStats()
        self._masker: ThreadPoolExecutor | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def info(self) -> EngineInfo:
        """Static facts about the model and context."""
        if self._info is None:
            raise ServiceUnavailableError("the model is still loading")
        return self._info

    @property
    def tokenizer(self) -> Any:
        """The model (it tokenises and detokenises)."""
        if self._model is None:
            raise ServiceUnavailableError("the model is still loading")
        return self._model

    @property
    def chat_template(self) -> str | None:
        """The chat template stored in the GGUF."""
        return self._model.chat_template if self._model is not None else None

    @property
    def ready(self) -> bool:
        """True when requests can be served."""
        return self._ready and not self._stopping

    def start(self) -> None:
        """Load the model and context, then start the compute thread (blocking)."""
        from haloserve.engine.llamacpp import Batch, LlamaContext, LlamaModel, uses_openmp

        s = self.settings
        self._model = LlamaModel(self.model_path, model_params(s))
        self._ctx = LlamaContext(self._model, context_params(s, self._model.n_ctx_train))
        ctx = self._ctx
        n_ctx_slot = ctx.n_ctx // s.parallel if s.kv_unified else ctx.n_ctx_seq
        self._batch = Batch(ctx.n_batch)
        ctx.warmup(self._batch)
        self._slots = [Slot(seq=i) for i in range(s.parallel)]
        self._info = EngineInfo(
            model_path=str(self.model_path),
            n_ctx=ctx.n_ctx,
            n_ctx_slot=n_ctx_slot,
            n_parallel=s.parallel,
            n_vocab=self._model.n_vocab,
            n_ctx_train=self._model.n_ctx_train,
            kv_cache_bytes=ctx.kv_cache_bytes,
            description=self._model.description,
            extra={
                "n_batch": ctx.n_batch,
                "n_ubatch": ctx.n_ubatch,
                "threads": ctx.n_threads,
                "backend": backend_report(self._model, ctx),
                "context": context_report(ctx),
            },
            features=frozenset({"grammar", "logprobs"}),
        )
        if uses_openmp() and ctx.n_threads > 1:
            log.warning(
                "llama-cpp-python was built with OpenMP: decoding on halo's engine thread can be several"
                " times slower (libgomp throttles threads that are not the main thread); rebuild it with"
                " CMAKE_ARGS=-DGGML_OPENMP=OFF (see docs/serve.md)"
            )
        self._masker = ThreadPoolExecutor(1, thread_name_prefix="halo-grammar")
        self._thread = threading.Thread(target=self._run, name="halo-engine", daemon=True)
        self._thread.start()
        self._ready = True

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel whatever is still running, stop the thread and free the model."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - a decode longer than the timeout
                log.warning("engine thread did not stop within %.1fs", timeout)
                return
        if self._masker is not None:
            self._masker.shutdown(wait=True)
        if self._ctx is not None:
            self._ctx.close()
        if self._model is not None:
            self._model.close()

    # -- event-loop side -------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> RequestStream:
        """Queue ``request``; raises 503 while loading or stopping and 429 when the queue is full."""
        if not self.ready:
            raise ServiceUnavailableError("the server is not ready (loading or shutting down)")
        waiting = self._n_submitted - self._n_taken
        free = sum(1 for sl in self._slots if sl.free)
        if waiting - free >= self.settings.max_queue:
            raise QueueFullError(
                f"all {self.settings.parallel} slots are busy and {waiting} requests are waiting "
                f"(--max-queue {self.settings.max_queue}); retry later",
                retry_after=1.0,
            )
        stream = RequestStream(asyncio.get_running_loop(), self._on_cancel)
        job = Job(request, stream)
        stream.job = job
        self._n_submitted += 1
        self._inbox.append(job)
        self._wake.set()
        return stream

    def _on_cancel(self, stream: RequestStream) -> None:
        self._wake.set()

    def stats(self) -> EngineStats:
        """Current counters; gauges computed now."""
        st = self._stats
        st.busy_slots = sum(1 for sl in self._slots if not sl.free)
        st.queue_depth = max(0, self._n_submitted - self._n_taken)
        return st

    # -- compute thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                if not self._active and not self._waiting and not self._inbox:
                    self._wake.wait(0.5)
                self._wake.clear()
                while self._inbox:
                    self._waiting.append(self._inbox.popleft())
                out: list[tuple[RequestStream, Output]] = []
                self._reap_cancelled()
                self._admit(out)
                if self._active:
                    self._step(out)
                deliver(out)
        except Exception:  # a bug: fail everything rather than hang clients, and stop taking work
            log.exception("engine thread crashed")
            self._ready = False
        finally:
            self._fail_all("the server is shutting down" if self._stopping else "engine stopped")

    def _fail_all(self, message: str) -> None:
        out: list[tuple[RequestStream, Output]] = []
        while self._inbox:
            self._waiting.append(self._inbox.popleft())
        for job in list(self._active) + list(self._waiting):
            if not job.stream.cancelled:
                out.append((job.stream, job.output("", None, "error", message)))
            self._release(job)
        self._waiting.clear()
        self._n_taken = self._n_submitted
        deliver(out)

    def _reap_cancelled(self) -> None:
        for job in [j for j in self._active if j.stream.cancelled]:
            self._release(job)
        if any(j.stream.cancelled for j in self._waiting):
            kept = deque(j for j in self._waiting if not j.stream.cancelled)
            self._n_taken += len(self._waiting) - len(kept)
            self._waiting = kept

    def _release(self, job: Job) -> None:
        if job in self._active:
            self._active.remove(job)
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
        if job.slot is not None:
            job.slot.job = None
            self._tick += 1
            job.slot.used = self._tick  # a slot whose request just ended is the most recently used
            job.slot = None

    def _admit(self, out: list[tuple[RequestStream, Output]]) -> None:
        from haloserve.engine.sampling import Sampler

        while self._waiting:
            free = [sl for sl in self._slots if sl.free]
            if not free:
                return
            job = self._waiting.popleft()
            self._n_taken += 1
            busy = [sl.seq for sl in self._slots if not sl.free]
            slot, keep = choose_slot(free, job.prompt, busy=busy, contiguous=not self.settings.kv_unified)
            try:
                if keep < len(slot.tokens):
                    self._ctx.seq_rm(slot.seq, keep, -1)
                    del slot.tokens[keep:]
                job.sampler = Sampler(
                    job.req.sampling,
                    n_vocab=self._model.n_vocab,
                    eog_tokens=self._model.eog_tokens,
                    prompt_tail=job.prompt,
                )
            except Exception as exc:
                log.exception("request %s: admission failed", job.req.request_id)
                out.append((job.stream, job.output("", None, "error", f"engine error: {exc}")))
                self._reset_slot(slot)
                continue
            slot.job = job
            job.stream.admitted = True  # no longer queued: a shutdown lets it run until its deadline
            self._tick += 1
            slot.used = self._tick
            job.slot = slot
            job.n_past = job.cached = keep
            job.t_admit = time.monotonic()
            self._stats.prompt_tokens_cached += keep
            self._active.append(job)

    def _reset_slot(self, slot: Slot) -> None:
        self._ctx.seq_rm(slot.seq, -1, -1)
        slot.tokens.clear()

    def _step(self, out: list[tuple[RequestStream, Output]]) -> None:
        batch, st = self._batch, self._stats
        batch.clear()
        decoding = sorted((j for j in self._active if j.pending is not None), key=lambda j: j.slot.seq)  # type: ignore[union-attr]
        at: dict[Job, int] = {}
        for job in decoding:
            slot = job.slot
            assert slot is not None and job.pending is not None
            at[job] = batch.add((job.pending,), len(slot.tokens), slot.seq, True)
        prefill = [(j, j.n_past, len(j.prompt)) for j in self._active if j.pending is None]
        chunks = plan_prefill(prefill, len(decoding), batch.capacity, self._ctx.n_ubatch)
        for ch in chunks:
            job = ch.job
            idx = batch.add(job.prompt[ch.start : ch.start + ch.count], ch.start, job.slot.seq, ch.last)
            if ch.last:
                at[job] = idx
        if batch.n == 0:
            return
        masks = self._start_masks([j for j in at if j.req.constraint is not None])
        rc = self._ctx.decode(batch)
        if masks is not None:
            t0 = time.perf_counter()
            st.grammar_mask_seconds += masks.result()
            st.grammar_wait_seconds += time.perf_counter() - t0
        st.steps += 1
        if rc != 0:
            self._decode_failed(rc, decoding + [c.job for c in chunks], out)
            return
        n_seqs = len(decoding) + len(chunks)
        st.max_seqs_in_step = max(st.max_seqs_in_step, n_seqs)
        if len(decoding) > 1:
            st.decode_steps_multi += 1
        for job in decoding:
            job.slot.tokens.append(job.pending)  # type: ignore[union-attr,arg-type]
        for ch in chunks:
            job = ch.job
            job.slot.tokens.extend(job.prompt[ch.start : ch.start + ch.count])
            job.n_past += ch.count
            st.prompt_tokens_processed += ch.count
        for job, idx in at.items():
            try:
                self._sample(job, idx, out)
            except Exception as exc:
                log.exception("request %s: sampling failed", job.req.request_id)
                out.append((job.stream, job.output("", None, "error", f"engine error: {exc}")))
                st.requests_failed += 1
                slot = job.slot
                self._release(job)
                if slot is not None:
                    self._reset_slot(slot)

    def _start_masks(self, jobs: list[Job]) -> Future[float] | None:
        """Compute the token masks of ``jobs`` in the worker thread, overlapping ``llama_decode``."""
        if not jobs:
            return None
        constraints = [j.req.constraint for j in jobs]

        def run() -> float:
            t0 = time.perf_counter()
            for c in constraints:
                c.compute_mask()  # type: ignore[union-attr]
            return time.perf_counter() - t0

        if self._masker is None:  # no worker (never started): compute here, before the decode
            done: Future[float] = Future()
            done.set_result(run())
            return done
        return self._masker.submit(run)

    def _decode_failed(self, rc: int, jobs: list[Job], out: list[tuple[RequestStream, Output]]) -> None:
        log.error("llama_decode returned %d; failing %d request(s) of this step", rc, len(jobs))
        for job in jobs:
            out.append((job.stream, job.output("", None, "error", f"llama_decode failed with code {rc}")))
            self._stats.requests_failed += 1
            slot = job.slot
            self._release(job)
            if slot is not None:
                self._reset_slot(slot)

    def _sample(self, job: Job, idx: int, out: list[tuple[RequestStream, Output]]) -> None:
        model, slot, req = self._model, job.slot, job.req
        assert slot is not None and self._info is not None
        top = None
        if req.constraint is not None or req.logprobs is not None:
            logits = self._ctx.logits(idx)
            if req.logprobs is not None:
                top = logprobs_of(logits, req.logprobs)
            if req.constraint is not None:
                req.constraint.apply(logits)
        tok = job.sampler.sample(self._ctx.ptr, idx, job.generated)
        job.generated += 1
        self._stats.generated_tokens += 1
        lps = None
        if top is not None:
            lp, best = top
            tops = [(t, model.piece(t, True), v) for t, v in best]
            shown = b"" if tok in model.eog_tokens else model.piece(tok, tok in req.preserved_tokens)
            lps = [TokenLogprob(tok, shown, float(lp[tok]), tops)]  # the chosen token as the text shows it
        finish = None
        error = None
        if req.constraint is not None and tok not in model.eog_tokens and not req.constraint.accept(tok):
            finish, error = "error", req.constraint.error or f"{req.constraint.param}: grammar matcher failed"
        if finish is not None:
            text = ""
        elif tok in model.eog_tokens:
            text = job.text.flush()
            finish = "stop"
        else:
            text = job.text.push(model.piece(tok, tok in req.preserved_tokens))
            if req.constraint is not None and req.constraint.done:
                text += job.text.flush()
                finish = "stop"
            elif job.text.stopped:
                finish = "stop"
            elif job.generated >= job.req.max_tokens or len(slot.tokens) + 1 >= self._info.n_ctx_slot:
                text += job.text.flush()
                finish = "length"
        if finish is None:
            job.pending = tok
            if text or lps:
                out.append((job.stream, job.output(text, tok, logprobs=lps)))
            return
        job.pending = None
        final = job.output(text, tok, finish, error, lps)
        if error is not None:  # the request's grammar failed: its fault, a 400 (see Output.error_param)
            final.error_param = req.constraint.param if req.constraint is not None else None
        out.append((job.stream, final))
        self._stats.requests_finished += 1
        self._release(job)
