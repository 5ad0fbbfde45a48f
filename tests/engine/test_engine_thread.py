"""The engine's thread, queue limit and lifecycle, over the fake backend (no model)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from haloserve.config.serve import ServeSettings
from haloserve.engine.base import Output
from haloserve.engine.bridge import RequestStream
from haloserve.engine.chat_template import CHATML
from haloserve.engine.fake_backend import FakeBackend
from haloserve.engine.fake_backend import byte_request as request
from haloserve.engine.llama_engine import LlamaEngine
from haloserve.errors import QueueFullError, ServiceUnavailableError


def engine(backend: FakeBackend, **settings: int) -> LlamaEngine:
    """A started engine over ``backend``."""
    s = ServeSettings(parallel=backend.info.n_parallel, **settings)  # type: ignore[arg-type]
    eng = LlamaEngine(s, Path("fake.gguf"), backend=backend)
    eng.start()
    return eng


async def drain(stream: RequestStream) -> list[Output]:
    """Every output of ``stream``."""
    return [o async for o in stream]


def text(outs: Sequence[Output]) -> str:
    """The text of a stream's outputs."""
    return "".join(o.text for o in outs)


def test_outputs_cross_from_the_engine_thread_to_the_event_loop() -> None:
    be = FakeBackend(parallel=2)
    eng = engine(be)
    try:
        assert eng.ready and eng.info is be.info and eng.tokenizer is be and eng.chat_template == CHATML

        async def main() -> list[list[Output]]:
            return list(await asyncio.gather(*(drain(eng.generate(request(p))) for p in ("x", "u", "a"))))

        x, u, a = asyncio.run(main())
        assert (text(x), text(u), text(a)) == ("yz", "vwxyz", "bcdefghijklmnopq")
        assert [o[-1].finish_reason for o in (x, u, a)] == ["stop", "stop", "length"]
        st = eng.stats()
        assert st.requests_finished == 3 and st.busy_slots == 0 and st.queue_depth == 0
        assert st.generated_tokens == 3 + 6 + 16
    finally:
        eng.stop()
    assert be.closed and be.live_samplers == 0


def test_a_full_queue_is_refused_with_429_at_once() -> None:
    be = FakeBackend(parallel=1)
    hold = be.hold = threading.Event()
    eng = engine(be, max_queue=1)
    try:

        async def main() -> tuple[list[Output], list[Output]]:
            first = eng.generate(request("a", 2))
            assert await asyncio.to_thread(be.entered.wait, 30)  # the engine thread is in a decode
            second = eng.generate(request("x"))  # waits: the queue holds one
            with pytest.raises(QueueFullError) as exc:
                eng.generate(request("w"))
            assert exc.value.retry_after == 1.0 and "--max-queue 1" in exc.value.message
            st = eng.stats()
            assert (st.busy_slots, st.queue_depth) == (1, 1)
            hold.set()
            return await drain(first), await drain(second)

        first, second = asyncio.run(main())
        assert text(first) == "bc" and text(second) == "yz"
    finally:
        eng.stop()


def test_stop_ends_running_and_queued_requests_with_a_shutdown_error() -> None:
    be = FakeBackend(parallel=1)
    hold = be.hold = threading.Event()
    eng = engine(be)

    async def main() -> tuple[list[Output], list[Output]]:
        running, queued = eng.generate(request("a", 50)), eng.generate(request("x"))
        assert await asyncio.to_thread(be.entered.wait, 30)
        stopper = threading.Thread(target=eng.stop)
        stopper.start()
        deadline = time.monotonic() + 30
        while eng.ready:  # stop() marks the engine stopping first thing
            assert time.monotonic() < deadline
            await asyncio.sleep(0)
        hold.set()
        await asyncio.to_thread(stopper.join, 30)
        return await drain(running), await drain(queued)

    running, queued = asyncio.run(main())
    assert running[-1].error == queued[-1].error == "the server is shutting down"
    assert [o.finish_reason for o in queued] == ["error"] and be.closed
    with pytest.raises(ServiceUnavailableError):
        eng.generate(request("x"))


def test_a_crash_of_the_engine_thread_fails_requests_and_stops_taking_work() -> None:
    def broken(history: Sequence[int]) -> int:
        raise RuntimeError("a bug in the model")

    be = FakeBackend(parallel=1, model=broken)
    eng = engine(be)
    try:

        async def main() -> list[Output]:
            return await drain(eng.generate(request("a")))

        outs = asyncio.run(main())
        assert [(o.finish_reason, o.error) for o in outs] == [("error", "engine stopped")]
        assert not eng.ready
    finally:
        eng.stop()


def test_nothing_is_served_before_start() -> None:
    eng = LlamaEngine(ServeSettings(), Path("fake.gguf"), backend=FakeBackend())
    with pytest.raises(ServiceUnavailableError):
        eng.generate(request("x"))
    with pytest.raises(ServiceUnavailableError):
        _ = eng.info
    assert eng.chat_template is None and eng.stats().busy_slots == 0


def test_the_engine_threads_cpu_time_is_counted_by_phase() -> None:
    be = FakeBackend(parallel=2)
    eng = engine(be)
    try:
        assert eng.stats().engine_cpu_seconds["tokens"] == 0.0

        async def main() -> list[list[Output]]:
            return list(await asyncio.gather(*(drain(eng.generate(request(p))) for p in ("a", "b"))))

        asyncio.run(main())
        cpu = eng.stats().engine_cpu_seconds
        assert set(cpu) == {"schedule", "decode", "tokens", "handoff"}
        assert cpu["tokens"] > 0 and cpu["schedule"] > 0 and all(v >= 0 for v in cpu.values())
        tid = eng._thread.native_id if eng._thread is not None else None
        comm = Path(f"/proc/self/task/{tid}/comm")
        if comm.exists():  # Linux: the OS knows the thread by name (top -H, gpu_bench.py)
            assert comm.read_text().strip() == "halo-engine"
    finally:
        eng.stop()
