"""The child-process engine (engine/process.py) over the fake backend: outputs cross the pipe unchanged,
a killed child fails its requests cleanly, says why, and is replaced once its workers answer."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haloserve.config.serve import ServeSettings
from haloserve.engine.base import Output
from haloserve.engine.bridge import RequestStream, StreamCancelled
from haloserve.engine.child import astuple_shallow
from haloserve.engine.fake_backend import FakeBackend
from haloserve.engine.fake_backend import byte_request as request
from haloserve.engine.llama_engine import LlamaEngine
from haloserve.engine.process import ProcessEngine
from haloserve.errors import QueueFullError, ServiceUnavailableError
from haloserve.testing.fake_child import FakeSpec

pytestmark = pytest.mark.process  # each engine spawns a Python child


async def drain(stream: RequestStream) -> list[Output]:
    """Every output of ``stream``."""
    return [o async for o in stream]


def children() -> set[int]:
    """Our child processes, zombies (exited, not reaped) included."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            out.add(int(stat.parent.name))
    return out


def wait_for(cond: object, timeout: float = 60.0) -> None:
    """Poll ``cond()`` until true (generous: a loaded 2-core machine)."""
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def down(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file whose existence stands for the fake worker being down."""
    return tmp_path_factory.mktemp("rpc") / "down"


@pytest.fixture(scope="module")
def engine(down: Path) -> Iterator[ProcessEngine]:
    """One child-process engine over the fake backend (2 slots, 20 ms per decode), shared by the tests."""
    s = ServeSettings(parallel=2, max_queue=2)  # type: ignore[call-arg]
    eng = ProcessEngine(s, FakeSpec(s, down=down, delay=0.02), probe_interval=0.2)
    eng.start()
    yield eng
    eng.stop(5)


def test_the_wire_tuple_is_outputs_field_order() -> None:
    out = Output(
        text="a",
        token_ids=[1],
        finish_reason="stop",
        prompt_tokens=2,
        completion_tokens=3,
        cached_tokens=1,
        error="e",
        logprobs=None,
        error_param="p",
    )
    assert Output(*astuple_shallow(out)) == out
    assert len(astuple_shallow(out)) == len(dataclasses.fields(Output))


def test_outputs_are_those_of_the_in_process_engine(engine: ProcessEngine) -> None:
    s = ServeSettings(parallel=2)  # type: ignore[call-arg]
    local = LlamaEngine(s, Path("fake.gguf"), backend=FakeBackend(parallel=2, n_ctx=2048))
    local.start()

    async def run(eng: object) -> list[list[Output]]:
        return list(await asyncio.gather(*(drain(eng.generate(request(p))) for p in ("x", "u", "a"))))  # type: ignore[attr-defined]

    try:
        want = asyncio.run(run(local))
    finally:
        local.stop()
    got = asyncio.run(run(engine))
    assert [[dataclasses.astuple(o) for o in outs] for outs in got] == [
        [dataclasses.astuple(o) for o in outs] for outs in want
    ]
    assert "".join(o.text for o in got[1]) == "vwxyz"
    assert engine.tokenizer.tokenize("hi", add_special=False) == [104, 105] and engine.chat_template
    st = engine.stats()
    assert st.requests_finished >= 3 and st.generated_tokens >= 2 + 5 + 16


def test_cancel_crosses_and_the_queue_limit_holds(engine: ProcessEngine) -> None:
    async def main() -> None:
        streams = [engine.generate(request("1", max_tokens=1000)) for _ in range(4)]  # 2 slots + 2 queued
        with pytest.raises(QueueFullError):
            engine.generate(request("1"))
        first = await streams[0].__anext__()
        assert first.text == "a"
        for st in streams:
            st.cancel()
        with pytest.raises(StreamCancelled):
            await streams[0].__anext__()

    asyncio.run(main())
    wait_for(lambda: engine.stats().busy_slots == 0 and engine.stats().queue_depth == 0)


def test_a_killed_child_fails_its_streams_names_the_worker_and_is_replaced(
    engine: ProcessEngine, down: Path
) -> None:
    before = engine.stats()
    pid = engine.child_pid
    assert pid is not None
    others = children() - {pid}  # other tests' servers (session fixtures) are children of pytest too

    async def cut() -> tuple[list[Output], float]:
        stream = engine.generate(request("1", max_tokens=1000))
        outs = [await stream.__anext__()]  # it is streaming
        down.touch()  # the worker is "down" from now on
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        outs += [o async for o in stream]
        return outs, time.monotonic() - t0

    outs, took = asyncio.run(cut())
    assert outs[-1].finish_reason == "error" and "fake:1" in (outs[-1].error or "")
    assert took < 30
    assert not engine.ready and "fake:1" in (engine.fault or "")
    with pytest.raises(ServiceUnavailableError) as err:
        asyncio.run(_generate(engine))
    assert err.value.retry_after and "fake:1" in err.value.message
    time.sleep(1.0)  # the supervisor keeps probing and does not reload while the worker is down
    assert not engine.ready and engine.restarts == 0
    down.unlink()
    wait_for(lambda: engine.ready)
    assert engine.restarts == 1 and engine.fault is None and engine.child_pid not in (None, pid)
    outs = asyncio.run(drain_one(engine, "x"))
    assert "".join(o.text for o in outs) == "yz"
    after = engine.stats()
    assert after.requests_failed >= before.requests_failed + 1  # counters never go back after a reload
    assert after.generated_tokens >= before.generated_tokens
    assert children() - others == {engine.child_pid}  # the dead one was reaped


async def _generate(engine: ProcessEngine) -> None:
    engine.generate(request("x"))


async def drain_one(engine: ProcessEngine, text: str) -> list[Output]:
    """Every output of one request."""
    return await drain(engine.generate(request(text)))


def test_a_failed_reload_is_retried(tmp_path: Path) -> None:
    s = ServeSettings(parallel=1)  # type: ignore[call-arg]
    fail = tmp_path / "fail"
    threads_before = set(threading.enumerate())
    children_before, fds_before = children(), len(os.listdir("/proc/self/fd"))
    eng = ProcessEngine(s, FakeSpec(s, fail_load=fail), probe_interval=0.2)
    eng.start()
    try:
        fail.touch()
        pid = eng.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: "reload failed" in (eng.fault or ""))
        assert "injected load failure" in (eng.fault or "") and not eng.ready
        fail.unlink()
        wait_for(lambda: eng.ready)
        assert "".join(o.text for o in asyncio.run(drain_one(eng, "u"))) == "vwxyz"
    finally:
        eng.stop(5)
    assert set(threading.enumerate()) <= threads_before  # no thread, child or pipe outlives stop()
    assert children() <= children_before and len(os.listdir("/proc/self/fd")) <= fds_before


def test_a_child_that_stops_making_progress_is_replaced() -> None:
    s = ServeSettings(parallel=1)  # type: ignore[call-arg]
    eng = ProcessEngine(s, FakeSpec(s, delay=3.0), probe_interval=0.2, stall_timeout=1.0)
    eng.start()  # each decode takes 3 s: a worker that hangs, as the parent sees it
    try:
        time.sleep(2.0)  # idle for longer than the stall timeout: not a stall (nothing was asked)
        assert eng.ready and eng.restarts == 0
        outs = asyncio.run(drain_one(eng, "x"))
        assert outs[-1].finish_reason == "error" and "no engine step for" in (outs[-1].error or "")
        wait_for(lambda: eng.ready)
        assert eng.restarts == 1
    finally:
        eng.stop(5)
