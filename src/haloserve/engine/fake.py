"""A fake engine: the real :class:`Engine` interface with predictable output and timing, no model.

It serves tests and benchmarks that measure the HTTP layer, the gateway or a load generator rather than
llama.cpp. Tokens are UTF-8 bytes (vocabulary 256 plus BOS/EOS), the reply is a fixed English sentence
repeated, the first token comes after ``fake_ttft`` seconds and each next one after ``fake_itl``. It
honours slots, the queue limit, ``max_tokens``, stop strings, ``ignore_eos``/``min_tokens`` and
cancellation exactly as the real engine does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from haloserve.config.serve import ServeSettings
from haloserve.engine.base import EngineInfo, EngineStats, GenerationRequest, Output
from haloserve.engine.bridge import RequestStream
from haloserve.engine.chat_template import CHATML
from haloserve.engine.textstream import TextStream
from haloserve.errors import QueueFullError, ServiceUnavailableError

REPLY = "The quick brown fox jumps over the lazy dog. "
NATURAL_LENGTH = 24  # tokens before the fake model "chooses" to stop, unless told to ignore EOS
BOS, EOS = 256, 257


def _cancel_task(stream: RequestStream) -> None:
    stream.job.cancel()


class ByteTokenizer:
    """UTF-8 bytes as tokens."""

    bos_text = "<s>"
    eos_text = "</s>"

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """One token per UTF-8 byte, BOS first when ``add_special``."""
        return ([BOS] if add_special else []) + list(text.encode("utf-8"))

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Bytes back to text (special tokens dropped)."""
        return bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")


class FakeEngine:
    """Implements the engine interface with asyncio timers instead of a model."""

    def __init__(
        self,
        settings: ServeSettings,
        model_path: str = "fake.gguf",
        *,
        start_delay: float = 0.0,
        start_error: str | None = None,
    ) -> None:
        self.settings = settings
        # A load that takes time or fails (the many-models manager's tests): start() sleeps, then raises.
        self.start_delay = start_delay
        self.start_error = start_error
        n_ctx = settings.ctx_size or 4096 * settings.parallel
        self._info = EngineInfo(
            model_path=model_path,
            n_ctx=n_ctx,
            n_ctx_slot=n_ctx // settings.parallel,
            n_parallel=settings.parallel,
            n_vocab=258,
            n_ctx_train=n_ctx,
            description="fake engine (no model)",
        )
        self._tok = ByteTokenizer()
        self._ready = False
        self._sem: asyncio.Semaphore | None = None
        self._waiting = 0
        self._busy = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats = EngineStats()

    @property
    def info(self) -> EngineInfo:
        """Static facts."""
        return self._info

    @property
    def tokenizer(self) -> ByteTokenizer:
        """The byte tokenizer."""
        return self._tok

    @property
    def chat_template(self) -> str:
        """ChatML."""
        return CHATML

    @property
    def ready(self) -> bool:
        """True after :meth:`start`."""
        return self._ready

    def start(self) -> None:
        """Nothing to load (or wait ``start_delay`` seconds, then fail with ``start_error`` if set)."""
        if self.start_delay:
            time.sleep(self.start_delay)
        if self.start_error is not None:
            raise RuntimeError(self.start_error)
        self._ready = True

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel running fake generations."""
        self._ready = False
        for task in list(self._tasks):
            task.get_loop().call_soon_threadsafe(task.cancel)

    def stats(self) -> EngineStats:
        """Counters and gauges."""
        self._stats.busy_slots = self._busy
        self._stats.queue_depth = self._waiting
        return self._stats

    def generate(self, request: GenerationRequest) -> RequestStream:
        """Queue a fake generation."""
        if not self._ready:
            raise ServiceUnavailableError("the server is not ready (loading or shutting down)")
        free = self.settings.parallel - self._busy
        if self._waiting - free >= self.settings.max_queue:
            raise QueueFullError(f"all {self.settings.parallel} slots are busy; retry later", retry_after=1.0)
        loop = asyncio.get_running_loop()
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.settings.parallel)
        stream = RequestStream(loop, _cancel_task)
        task = loop.create_task(self._run(request, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        stream.job = task
        self._waiting += 1
        return stream

    async def _run(self, req: GenerationRequest, stream: RequestStream) -> None:
        assert self._sem is not None
        s = self.settings
        waiting = True
        try:
            async with self._sem:
                self._waiting -= 1
                waiting = False
                stream.admitted = True
                self._busy += 1
                try:
                    await self._produce(req, stream, s.fake_ttft, s.fake_itl)
                finally:
                    self._busy -= 1
        except asyncio.CancelledError:
            if not stream.cancelled:
                stream.put(Output(finish_reason="error", error="the server is shutting down"))
            raise
        finally:
            if waiting:
                self._waiting -= 1

    async def _produce(self, req: GenerationRequest, stream: RequestStream, ttft: float, itl: float) -> None:
        text = TextStream(req.stop)
        reply = REPLY.encode()
        sp = req.sampling
        natural = max(NATURAL_LENGTH, sp.min_tokens)
        self._stats.prompt_tokens_processed += len(req.prompt_tokens)
        for i in range(req.max_tokens):
            await asyncio.sleep(ttft if i == 0 else itl)
            if stream.cancelled:
                return
            n = i + 1
            self._stats.generated_tokens += 1
            if n > natural and not sp.ignore_eos:
                stream.put(self._out(req, text.flush(), EOS, n, "stop"))
                return
            tok = reply[i % len(reply)]
            piece = text.push(bytes([tok]))
            if text.stopped:
                stream.put(self._out(req, piece, tok, n, "stop"))
                return
            if n == req.max_tokens or len(req.prompt_tokens) + n >= self._info.n_ctx_slot:
                stream.put(self._out(req, piece + text.flush(), tok, n, "length"))
                return
            if piece:
                stream.put(self._out(req, piece, tok, n, None))
        stream.put(self._out(req, text.flush(), None, req.max_tokens, "length"))

    def _out(self, req: GenerationRequest, text: str, tok: int | None, n: int, finish: str | None) -> Output:
        if finish is not None:
            self._stats.requests_finished += 1
        return Output(
            text=text,
            token_ids=[] if tok is None else [tok],
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=len(req.prompt_tokens),
            completion_tokens=n,
        )
