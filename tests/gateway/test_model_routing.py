"""Model-aware routing (issue 17): where a model is loaded wins over where it can be loaded; failed last."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from haloserve.config.gateway import BackendSpec
from haloserve.gateway.health import parse_models
from haloserve.gateway.policy import Balancer, RouteInfo
from haloserve.gateway.pool import Pool
from haloserve.testing.gateway import ThreadedGateway
from haloserve.testing.upstream import FakeUpstream
from haloserve.testing.upstream_cli import _parser, config_flags, config_from_args
from haloserve.testing.upstream_config import UpstreamConfig
from tests.gateway.conftest import MakeGateway, MakeUpstream

MSG = [{"role": "user", "content": "hello there"}]


def test_parse_models_reads_states() -> None:
    data = {
        "object": "list",
        "data": [
            {"id": "a"},  # llama-server, vLLM: no status, so loaded
            {"id": "b", "status": {"value": "loaded"}},
            {"id": "c", "status": {"value": "unloaded"}},
            {"id": "d", "status": {"value": "failed", "failed": True, "error": "bad file"}},
            {"id": "e", "status": "odd"},
            {"no": "id"},
        ],
    }
    assert parse_models(data) == (frozenset("abcde"), {"c": "unloaded", "d": "failed"})
    assert parse_models({"data": "nope"}) is None and parse_models([]) is None


def test_fake_upstream_states_survive_its_command_line() -> None:
    cfg = UpstreamConfig(models=["a", "b"], model_status={"a": "unloaded", "b": "failed"}, health_status=503)
    assert config_from_args(_parser().parse_args(config_flags(cfg))) == cfg


def pool_of(states: list[dict[str, str]], **limits: int) -> Pool:
    specs = [
        BackendSpec(url=f"http://b{i}", max_concurrency=limits.get(f"b{i}", 0))
        for i in range(len(states))
    ]
    pool = Pool(specs, Balancer("round-robin"))
    for b, st in zip(pool.backends, states, strict=True):
        b.models, b.model_states, b.healthy = frozenset({"m", "other"}), st, True
    return pool


def picks(pool: Pool, n: int = 6) -> list[str]:
    out = []
    for _ in range(n):
        b = pool.pick("m", RouteInfo(), set())
        assert b is not None
        out.append(b.url)
        pool.release(b)
    return out


def test_pick_prefers_loaded_then_loading_then_unloaded_and_failed_last() -> None:
    assert set(picks(pool_of([{"m": "unloaded"}, {}, {"m": "failed"}]))) == {"http://b1"}
    assert set(picks(pool_of([{"m": "unloaded"}, {"m": "loading"}]))) == {"http://b1"}
    assert set(picks(pool_of([{"m": "failed"}, {"m": "unloaded"}]))) == {"http://b1"}
    assert set(picks(pool_of([{}, {"other": "unloaded"}]))) == {"http://b0", "http://b1"}, "states of others"
    assert set(picks(pool_of([{"m": "failed"}, {"m": "failed"}]))) == {"http://b0", "http://b1"}
    pool = pool_of([{"m": "failed"}, {"m": "unloaded"}])
    pool.backends[1].healthy = False
    assert set(picks(pool)) == {"http://b0"}, "failed only when nothing else is live"


def test_a_full_loaded_backend_spills_to_one_that_can_load_but_never_to_failed() -> None:
    pool = pool_of([{}, {"m": "unloaded"}, {"m": "failed"}], b0=1, b1=1)
    first = pool.pick("m", RouteInfo(), set())
    assert first is not None and first.url == "http://b0"
    second = pool.pick("m", RouteInfo(), set())
    assert second is not None and second.url == "http://b1", "the loaded one is full: load it elsewhere"
    assert pool.pick("m", RouteInfo(), set()) is None, "both full: wait, rather than use the failed one"


def wait_for(cond: Callable[[], bool], limit: float = 10.0) -> None:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < limit, f"not within {limit:g}s"
        time.sleep(0.05)


def health(gw: ThreadedGateway) -> dict[str, dict[str, Any]]:
    return {b["url"]: b for b in httpx.get(gw.url + "/health").json()["backends"]}


def chats(up: FakeUpstream) -> int:
    return up.stats.by_path.get("/v1/chat/completions", 0)


@pytest.mark.slow
def test_routing_follows_the_states_backends_report(
    make_upstream: MakeUpstream, make_gateway: MakeGateway
) -> None:
    cold = make_upstream(models=["m", "x"], model_status={"m": "unloaded", "x": "loaded"})
    warm = make_upstream(models=["m"])  # no status at all: llama-server, vLLM
    broken = make_upstream(models=["m"], model_status={"m": "failed"})
    gw = make_gateway([cold.url, warm.url, broken.url], policy="round-robin")
    info = health(gw)
    assert info[cold.url]["loaded"] == ["x"]
    assert info[cold.url]["model_states"] == {"m": "unloaded", "x": "loaded"}
    assert info[warm.url]["loaded"] == ["m"] and info[broken.url]["model_states"] == {"m": "failed"}
    client = gw.client()
    for _ in range(6):
        client.chat.completions.create(model="m", messages=MSG, max_tokens=2)
    assert (chats(cold), chats(warm), chats(broken)) == (0, 6, 0)

    # the state is read again on every probe: loaded on cold too, so both share the traffic
    cold.configure(model_status={"m": "loaded", "x": "loaded"})
    wait_for(lambda: health(gw)[cold.url]["loaded"] == ["m", "x"])
    for _ in range(6):
        client.chat.completions.create(model="m", messages=MSG, max_tokens=2)
    assert chats(cold) == 3 and chats(warm) == 9 and chats(broken) == 0

    # nowhere else to go: the backend where it failed gets the request (and says why if it fails)
    cold.configure(health_status=503)
    warm.configure(health_status=503)
    wait_for(lambda: [b["healthy"] for b in health(gw).values()] == [False, False, True])
    client.chat.completions.create(model="m", messages=MSG, max_tokens=2)
    assert chats(broken) == 1
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nowhere", messages=MSG, max_tokens=2)
