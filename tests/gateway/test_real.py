"""The gateway in front of real `halo serve` backends (the bundled model): learning, affinity, failover."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from haloserve.config.gateway import GatewaySettings
from haloserve.testing.gateway import ThreadedGateway, gateway_in_thread
from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.model
SERVE_ARGS = ["--parallel", "2", "--ctx-size", "2048", "--threads", "1", "--alias", "smol"]


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[RemoteServer]]:
    """Two light `halo serve` nodes (2 slots x 1024 tokens, one thread each), shared by this module."""
    a = RemoteServer(SERVE_ARGS).start()
    try:
        b = RemoteServer(SERVE_ARGS).start()
    except BaseException:
        a.stop()
        raise
    try:
        yield [a, b]
    finally:
        a.stop()
        b.stop()


def metric(node: RemoteServer, name: str) -> float:
    text = httpx.get(node.url + "/metrics").text
    m = re.search(rf"^{name}(?:_total)?(?:\{{[^}}]*\}})?\s+([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def gateway(nodes: list[RemoteServer], tmp: Path, **kw: object) -> gateway_in_thread:  # type: ignore[valid-type]
    values = {
        "port": 0,
        "backends": [n.url for n in nodes],
        "keys_db": tmp / "gw.db",
        "health_interval": 0.3,
        "access_log": False,
        **kw,
    }
    return gateway_in_thread(GatewaySettings(**values))  # type: ignore[arg-type]


def test_learns_models_and_slots(nodes: list[RemoteServer], tmp_path: Path) -> None:
    with gateway(nodes, tmp_path) as gw:
        gw_: ThreadedGateway = gw
        limits = gw_.call(lambda: [(b.limit, sorted(b.models)) for b in gw_.gateway.pool.backends])
        assert limits == [(2, ["smol"]), (2, ["smol"])]
        reply = gw_.client().chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4
        )
        assert reply.usage is not None and reply.usage.completion_tokens > 0


def _cache_hits(nodes: list[RemoteServer]) -> float:
    return sum(metric(n, "halo_prefix_cache_hit_tokens") for n in nodes)


def test_prefix_policy_reuses_caches_more_than_round_robin(nodes: list[RemoteServer], tmp_path: Path) -> None:
    # Sequential requests: a node's engine reuses a slot only for a shared prefix, else it takes its
    # first free slot, so each node keeps one conversation's prefix warm. Order A A B B defeats
    # round-robin (every node sees A, B, A, B) while prefix routing keeps A and B apart.
    systems = [
        f"You are an expert on {t}. " + " ".join(f"Fact {i} about {t}." for i in range(15))
        for t in ("astronomy and telescopes", "medieval bread baking")
    ]
    order = [0, 0, 1, 1] * 2
    hits = {}
    for policy in ("round-robin", "prefix"):
        with gateway(nodes, tmp_path, policy=policy) as gw:
            client = gw.client()
            before = _cache_hits(nodes)
            for turn, i in enumerate(order):
                messages = [
                    {"role": "system", "content": systems[i]},
                    {"role": "user", "content": f"Question {turn} for {policy}?"},
                ]
                client.chat.completions.create(model="smol", messages=messages, max_tokens=2)
            hits[policy] = _cache_hits(nodes) - before
            if policy == "prefix":
                assert gw.call(lambda: gw.gateway.pool.prefix_hits) >= len(order) - 2
    assert hits["prefix"] > hits["round-robin"] * 1.5, hits


def test_cancellation_reaches_the_backend(nodes: list[RemoteServer], tmp_path: Path) -> None:
    with gateway(nodes[:1], tmp_path) as gw:
        node = nodes[0]
        generated = metric(node, "halo_engine_generated_tokens")
        body = {
            "model": "smol",
            "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 800,
            "stream": True,
            "ignore_eos": True,
        }
        with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            next(r.iter_lines())
        deadline = time.monotonic() + 10
        while metric(node, "halo_slots_busy") > 0:
            assert time.monotonic() < deadline, "the backend kept generating after the client left"
            time.sleep(0.05)
        assert metric(node, "halo_engine_generated_tokens") - generated < 800


def test_failover_when_a_backend_is_killed_under_load(nodes: list[RemoteServer], tmp_path: Path) -> None:
    victim = RemoteServer(SERVE_ARGS).start()
    try:
        with gateway([nodes[0], victim], tmp_path, policy="round-robin", queue_timeout=60) as gw:
            errors: list[str] = []
            done: list[int] = []
            stop = threading.Event()

            def load() -> None:
                client = gw.client(timeout=60)
                while not stop.is_set():
                    try:
                        r = client.chat.completions.create(
                            model="smol",
                            messages=[{"role": "user", "content": "Count to twenty."}],
                            max_tokens=24,
                        )
                        done.append(r.usage.completion_tokens if r.usage else 0)
                    except Exception as exc:
                        errors.append(repr(exc))

            threads = [threading.Thread(target=load) for _ in range(6)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 20
            while gw.call(lambda: gw.gateway.pool.backends[1].in_flight) == 0:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            victim.stop(signal.SIGKILL)
            n = len(done)
            while len(done) < n + 6:
                assert time.monotonic() < deadline + 40
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join()
            assert not errors, errors[:3]
            assert gw.call(lambda: gw.gateway.pool.backends[1].state) == "open"
    finally:
        victim.stop()
