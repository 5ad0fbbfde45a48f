"""Continuous batching over one backend context: admission, slots, batches, sampling and stops.

Each :meth:`Scheduler.step` (1) drops cancelled requests, (2) admits waiting requests into free slots,
reusing the longest cached prompt prefix, (3) builds one batch with a token for every decoding sequence
followed by prompt chunks, (4) runs it with one :meth:`Backend.decode`, and (5) samples, detokenises and
checks stop conditions for every sequence that produced logits. It returns the step's outputs; the
caller (the engine thread) hands them to the event loops. Nothing here touches llama.cpp directly.

Grammar-constrained sequences need a token mask before they can sample. The masks of a step are computed
in a worker thread while the decode runs (both release the GIL), so a constrained sequence costs the
batch only the time its mask takes beyond the decode, which the stats count.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Executor, Future
from typing import Any

from haloserve.engine.backend import Backend, Span
from haloserve.engine.base import EngineStats, GenerationRequest, Output, TokenLogprob
from haloserve.engine.bridge import RequestStream
from haloserve.engine.logits import logprobs_of
from haloserve.engine.slots import Slot, choose_slot, plan_prefill
from haloserve.engine.stepcost import StepCost, clock
from haloserve.engine.textstream import TextStream

log = logging.getLogger("haloserve.engine")

Outputs = list[tuple[RequestStream, Output]]
Top = tuple[Any, list[tuple[int, float]]]  # a row's log-probabilities and its most likely tokens


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


class Scheduler:
    """The requests of one backend context, in ``parallel`` slots; driven by one thread."""

    def __init__(
        self,
        backend: Backend,
        *,
        parallel: int,
        kv_unified: bool = False,
        stats: EngineStats | None = None,
        masker: Executor | None = None,
        cost: StepCost | None = None,
    ) -> None:
        self.backend = backend
        self.cost = cost if cost is not None else StepCost()
        self.slots = [Slot(seq=i) for i in range(parallel)]
        self.waiting: deque[Job] = deque()
        self.active: list[Job] = []
        self.stats = stats if stats is not None else EngineStats()
        self.n_taken = 0  # requests that left the queue (admitted, refused or cancelled while waiting)
        self._contiguous = not kv_unified
        self._masker = masker  # None: masks are computed on this thread, before the decode
        self._n_ctx_slot = backend.info.n_ctx_slot
        self._tick = 0  # slot-use clock (least recently used caches are overwritten first)

    @property
    def idle(self) -> bool:
        """True when no request is running or waiting."""
        return not self.active and not self.waiting

    def submit(self, job: Job) -> None:
        """Queue ``job`` behind the waiting ones."""
        self.waiting.append(job)

    def step(self) -> Outputs:
        """One scheduling round; returns the outputs it produced."""
        out: Outputs = []
        t0 = clock()
        self._reap_cancelled()
        self._admit(out)
        if self.active:
            self._step(out, t0)
        else:
            self.cost.schedule_ns += clock() - t0
        return out

    def fail_all(self, message: str) -> Outputs:
        """End every running and waiting request with ``message`` (the engine is stopping)."""
        out: Outputs = []
        for job in list(self.active) + list(self.waiting):
            if not job.stream.cancelled:
                out.append((job.stream, job.output("", None, "error", message)))
            self._release(job)
        self.n_taken += len(self.waiting)
        self.waiting.clear()
        return out

    def _reap_cancelled(self) -> None:
        for job in [j for j in self.active if j.stream.cancelled]:
            self._release(job)
        if any(j.stream.cancelled for j in self.waiting):
            kept = deque(j for j in self.waiting if not j.stream.cancelled)
            self.n_taken += len(self.waiting) - len(kept)
            self.waiting = kept

    def _release(self, job: Job) -> None:
        if job in self.active:
            self.active.remove(job)
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
        if job.slot is not None:
            job.slot.job = None
            self._tick += 1
            job.slot.used = self._tick  # a slot whose request just ended is the most recently used
            job.slot = None

    def _admit(self, out: Outputs) -> None:
        be = self.backend
        while self.waiting:
            free = [sl for sl in self.slots if sl.free]
            if not free:
                return
            job = self.waiting.popleft()
            self.n_taken += 1
            busy = [sl.seq for sl in self.slots if not sl.free]
            slot, keep = choose_slot(free, job.prompt, busy=busy, contiguous=self._contiguous)
            try:
                if keep < len(slot.tokens):
                    be.seq_rm(slot.seq, keep, -1)
                    del slot.tokens[keep:]
                req = job.req
                cpu_only = req.constraint is not None or req.logprobs is not None
                job.sampler = be.sampler(req.sampling, job.prompt, seq=slot.seq, cpu_only=cpu_only)
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
            self.stats.prompt_tokens_cached += keep
            self.active.append(job)

    def _reset_slot(self, slot: Slot) -> None:
        self.backend.seq_rm(slot.seq, -1, -1)
        slot.tokens.clear()

    def _step(self, out: Outputs, t0: int) -> None:
        be, st, cost = self.backend, self.stats, self.cost
        decoding = sorted((j for j in self.active if j.pending is not None), key=lambda j: j.slot.seq)  # type: ignore[union-attr]
        spans: list[Span] = []
        at: dict[Job, int] = {}  # job -> batch index of the token whose logits it samples from
        n = 0
        for job in decoding:
            slot = job.slot
            assert slot is not None and job.pending is not None
            spans.append(Span((job.pending,), len(slot.tokens), slot.seq, True))
            at[job] = n
            n += 1
        prefill = [(j, j.n_past, len(j.prompt)) for j in self.active if j.pending is None]
        chunks = plan_prefill(prefill, len(decoding), be.n_batch, be.n_ubatch)
        for ch in chunks:
            job = ch.job
            spans.append(Span(job.prompt[ch.start : ch.start + ch.count], ch.start, job.slot.seq, ch.last))
            n += ch.count
            if ch.last:
                at[job] = n - 1
        if n == 0:
            cost.schedule_ns += clock() - t0
            return
        masks = self._start_masks([j for j in at if j.req.constraint is not None])
        t1 = clock()
        rc = be.decode(spans)
        if masks is not None:
            w0 = time.perf_counter()
            st.grammar_mask_seconds += masks.result()
            st.grammar_wait_seconds += time.perf_counter() - w0
        t2 = clock()
        cost.schedule_ns += t1 - t0
        cost.decode_ns += t2 - t1
        cost.steps += 1
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
        sample = self._sample_detailed if cost.detail else self._sample
        for job, idx in at.items():
            try:
                sample(job, idx, out)
            except Exception as exc:
                log.exception("request %s: sampling failed", job.req.request_id)
                out.append((job.stream, job.output("", None, "error", f"engine error: {exc}")))
                st.requests_failed += 1
                slot = job.slot
                self._release(job)
                if slot is not None:
                    self._reset_slot(slot)
        cost.seq_steps += len(at)
        cost.tokens_ns += clock() - t2

    def _start_masks(self, jobs: list[Job]) -> Future[float] | None:
        """Compute the token masks of ``jobs`` in the worker thread, overlapping the decode."""
        if not jobs:
            return None
        constraints = [j.req.constraint for j in jobs]

        def run() -> float:
            t0 = time.perf_counter()
            for c in constraints:
                c.compute_mask()  # type: ignore[union-attr]
            return time.perf_counter() - t0

        if self._masker is None:
            done: Future[float] = Future()
            done.set_result(run())
            return done
        return self._masker.submit(run)

    def _decode_failed(self, rc: int, jobs: list[Job], out: Outputs) -> None:
        log.error("llama_decode returned %d; failing %d request(s) of this step", rc, len(jobs))
        for job in jobs:
            out.append((job.stream, job.output("", None, "error", f"llama_decode failed with code {rc}")))
            self.stats.requests_failed += 1
            slot = job.slot
            self._release(job)
            if slot is not None:
                self._reset_slot(slot)

    def _sample(self, job: Job, idx: int, out: Outputs) -> None:
        req = job.req
        top = None if req.constraint is None and req.logprobs is None else self._row_work(job, idx)
        self._emit(job, self.backend.sample(job.sampler, idx, job.generated), top, out)

    def _sample_detailed(self, job: Job, idx: int, out: Outputs) -> None:
        """:meth:`_sample` with the CPU time of its three parts counted (StepCost.detail)."""
        cost, req = self.cost, job.req
        t0 = clock()
        top = None if req.constraint is None and req.logprobs is None else self._row_work(job, idx)
        t1 = clock()
        tok = self.backend.sample(job.sampler, idx, job.generated)
        t2 = clock()
        self._emit(job, tok, top, out)
        cost.logits_ns += t1 - t0
        cost.sample_ns += t2 - t1
        cost.output_ns += clock() - t2

    def _row_work(self, job: Job, idx: int) -> Top | None:
        """Logprobs of the row, then the grammar mask applied to it (before the sampler reads it)."""
        req = job.req
        logits = self.backend.logits(idx)
        top = logprobs_of(logits, req.logprobs) if req.logprobs is not None else None
        if req.constraint is not None:
            req.constraint.apply(logits)
        return top

    def _emit(self, job: Job, tok: int, top: Top | None, out: Outputs) -> None:
        be, slot, req = self.backend, job.slot, job.req
        assert slot is not None
        eog = be.eog_tokens
        job.generated += 1
        self.stats.generated_tokens += 1
        lps = None
        if top is not None:
            lp, best = top
            tops = [(t, be.piece(t, True), v) for t, v in best]
            shown = b"" if tok in eog else be.piece(tok, tok in req.preserved_tokens)
            lps = [TokenLogprob(tok, shown, float(lp[tok]), tops)]  # the chosen token as the text shows it
        finish = None
        error = None
        if req.constraint is not None and tok not in eog and not req.constraint.accept(tok):
            finish, error = "error", req.constraint.error or f"{req.constraint.param}: grammar matcher failed"
        if finish is not None:
            text = ""
        elif tok in eog:
            text = job.text.flush()
            finish = "stop"
        else:
            text = job.text.push(be.piece(tok, tok in req.preserved_tokens))
            if req.constraint is not None and req.constraint.done:
                text += job.text.flush()
                finish = "stop"
            elif job.text.stopped:
                finish = "stop"
            elif job.generated >= job.req.max_tokens or len(slot.tokens) + 1 >= self._n_ctx_slot:
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
        self.stats.requests_finished += 1
        self._release(job)
