"""The model manager over fake engines: shared loads, LRU eviction, pinning, busy models, ttl, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from haloserve.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError, ServiceUnavailableError
from haloserve.server.models import ModelManager
from tests.models.conftest import FakeFleet

Fleet = Callable[..., FakeFleet]


def run(mgr: ModelManager, body: Callable[[ModelManager], Awaitable[None]]) -> None:
    """Start ``mgr``, run ``body`` on it and close it, in a fresh event loop."""

    async def main() -> None:
        await mgr.start()
        try:
            await body(mgr)
        finally:
            await mgr.close()

    asyncio.run(main())


async def use(mgr: ModelManager, name: str) -> None:
    """One request's worth of holding ``name``."""
    async with mgr.use(name):
        await asyncio.sleep(0)


def loaded(mgr: ModelManager) -> set[str]:
    return {m.id for m in mgr.models.values() if m.status == "loaded"}


def test_concurrent_requests_share_one_load(fleet: Fleet) -> None:
    f = fleet(a=10)
    f.delay["a"] = 0.3
    mgr = f.manager()

    async def body(mgr: ModelManager) -> None:
        got = await asyncio.gather(*(mgr.acquire("a") for _ in range(8)))
        assert all(m is got[0] for m in got) and got[0].leases == 8
        for m in got:
            mgr.release(m)

    run(mgr, body)
    assert f.made == ["a"] and mgr.models["a"].loads == 1


def test_least_recently_used_model_is_evicted(fleet: Fleet) -> None:
    f = fleet(a=40, b=40, c=40, budget=100)
    mgr = f.manager()

    async def body(mgr: ModelManager) -> None:
        await use(mgr, "a")
        await use(mgr, "b")
        await use(mgr, "c")  # a is the least recently used
        assert loaded(mgr) == {"b", "c"}
        await use(mgr, "b")
        await use(mgr, "a")  # now c is
        assert loaded(mgr) == {"a", "b"}
        assert mgr.used_bytes() <= mgr.budget

    run(mgr, body)
    assert mgr.models["a"].unloads == 1 and mgr.models["c"].unloads == 1 and mgr.models["b"].unloads == 0


def test_pinned_model_is_never_evicted(fleet: Fleet) -> None:
    f = fleet(a=40, b=40, c=40, budget=100)
    mgr = f.manager([f.entry("a", pinned=True), f.entry("b"), f.entry("c")])

    async def body(mgr: ModelManager) -> None:
        for _ in range(50):  # pinned models load at start
            if mgr.models["a"].status == "loaded":
                break
            await asyncio.sleep(0.01)
        for name in ("b", "c", "b", "c"):
            await use(mgr, name)
            assert "a" in loaded(mgr)

    run(mgr, body)
    assert mgr.models["a"].unloads == 0 and mgr.models["b"].unloads == 2


def test_a_busy_model_is_waited_for_then_evicted(fleet: Fleet) -> None:
    f = fleet(a=60, b=60, budget=100)
    mgr = f.manager()

    async def body(mgr: ModelManager) -> None:
        a = await mgr.acquire("a")
        waiter = asyncio.create_task(mgr.acquire("b"))
        await asyncio.sleep(0.3)
        assert not waiter.done() and mgr.models["a"].status == "loaded"  # a's request goes on
        mgr.release(a)
        b = await asyncio.wait_for(waiter, 10)
        mgr.release(b)
        assert loaded(mgr) == {"b"}

    run(mgr, body)


def test_waiting_for_busy_models_is_bounded(fleet: Fleet) -> None:
    f = fleet(a=60, b=60, budget=100)
    mgr = f.manager(load_timeout=0.3)

    async def body(mgr: ModelManager) -> None:
        a = await mgr.acquire("a")
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as err:
            await mgr.acquire("b")
        assert time.monotonic() - started < 5
        assert err.value.status == 503 and "Retry-After" in err.value.headers
        assert mgr.models["b"].status != "failed"  # busy neighbours are no fault of b's
        mgr.release(a)
        await use(mgr, "b")  # once a is idle, b gets its room

    run(mgr, body)


def test_a_slow_load_answers_503_and_goes_on(fleet: Fleet) -> None:
    f = fleet(a=10)
    f.delay["a"] = 0.6
    mgr = f.manager(load_timeout=0.1)

    async def body(mgr: ModelManager) -> None:
        with pytest.raises(ServiceUnavailableError) as err:
            await mgr.acquire("a")
        assert "still loading" in err.value.message and err.value.headers["Retry-After"]
        for _ in range(200):
            if mgr.models["a"].status == "loaded":
                break
            await asyncio.sleep(0.01)
        await use(mgr, "a")

    run(mgr, body)
    assert f.made == ["a"]  # the load the first request started is the one that finished


def test_a_failed_load_fails_only_its_own_requests(fleet: Fleet) -> None:
    f = fleet(bad=10, good=10)
    f.error["bad"] = "tensor data is not within the file bounds"
    mgr = f.manager()

    async def body(mgr: ModelManager) -> None:
        with pytest.raises(ModelLoadError) as err:
            await mgr.acquire("bad")
        assert "'bad'" in err.value.message and "not within the file bounds" in err.value.message
        assert mgr.models["bad"].status == "failed"
        await use(mgr, "good")
        with pytest.raises(ModelLoadError):  # no reload storm: the failure stands for a while
            await mgr.acquire("bad")
        assert f.made.count("bad") == 1
        f.error.pop("bad")
        await mgr.load("bad")  # an explicit load retries at once
        assert mgr.models["bad"].status == "loaded"

    run(mgr, body)


def test_idle_models_unload_after_their_ttl(fleet: Fleet) -> None:
    f = fleet(a=10, p=10)
    mgr = f.manager([f.entry("a", ttl=0.2), f.entry("p", ttl=0.2, pinned=True)])

    async def body(mgr: ModelManager) -> None:
        await use(mgr, "a")
        await use(mgr, "p")
        for _ in range(300):
            if mgr.models["a"].status == "unloaded":
                break
            await asyncio.sleep(0.01)
        assert loaded(mgr) == {"p"}  # a pinned model ignores its ttl
        assert mgr.models["a"].unloads == 1

    run(mgr, body)


def test_models_max_limits_the_count(fleet: Fleet) -> None:
    f = fleet(a=1, b=1, c=1, budget=1000)
    mgr = f.manager(max_models=2)

    async def body(mgr: ModelManager) -> None:
        for name in ("a", "b", "c"):
            await use(mgr, name)
        assert loaded(mgr) == {"b", "c"}

    run(mgr, body)


def test_a_model_larger_than_the_budget_fails_with_the_numbers(fleet: Fleet) -> None:
    f = fleet(big=500, small=10, budget=100)
    mgr = f.manager()
    assert mgr.fits_any()

    async def body(mgr: ModelManager) -> None:
        with pytest.raises(ModelLoadError) as err:
            await mgr.acquire("big")
        assert "needs 500 B" in err.value.message and "budget is 100 B" in err.value.message
        await use(mgr, "small")

    run(mgr, body)
    assert "big" not in f.made  # refused before any engine was made


def test_names_aliases_and_unknown_models(fleet: Fleet) -> None:
    f = fleet(a=10, b=10)
    mgr = f.manager([f.entry("a", aliases=("alpha",)), f.entry("b")])
    assert mgr.resolve("alpha") is mgr.models["a"]
    with pytest.raises(ModelNotFoundError):
        mgr.resolve("gpt-4")
    with pytest.raises(InvalidRequestError):
        mgr.resolve("")  # several models: the request must name one
    one = f.manager([f.entry("a")])
    assert one.resolve("") is one.models["a"]


def test_explicit_unload_waits_for_running_requests(fleet: Fleet) -> None:
    f = fleet(a=10)
    mgr = f.manager()

    async def body(mgr: ModelManager) -> None:
        a = await mgr.acquire("a")
        unloading = asyncio.create_task(mgr.unload("a"))
        await asyncio.sleep(0.2)
        assert not unloading.done()  # the request holding it goes first
        mgr.release(a)
        await asyncio.wait_for(unloading, 10)
        assert mgr.models["a"].status == "unloaded"
        with pytest.raises(InvalidRequestError):
            await mgr.unload("a")

    run(mgr, body)
