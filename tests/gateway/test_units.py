"""Pure parts of the gateway: policies, circuit breaker, settings, usage scanning, quotas."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from haloserve.config import load_settings
from haloserve.config.gateway import BackendSpec, GatewaySettings, parse_backend
from haloserve.errors import AuthenticationError, ConfigError, PermissionDeniedError, RateLimitError
from haloserve.gateway.accounting import KeyCache, Quotas, UsageBuffer, check_model
from haloserve.gateway.backends import CLOSED, HALF_OPEN, OPEN, Backend, BreakerConfig
from haloserve.gateway.policy import Balancer, RouteInfo, prompt_chunks, rendezvous
from haloserve.gateway.store import KeyRecord, hash_key
from haloserve.gateway.stream import UsageScanner, body_usage


def backends(n: int, **kw: object) -> list[Backend]:
    out = []
    for i in range(n):
        b = Backend(BackendSpec(url=f"http://b{i}:80", **kw))  # type: ignore[arg-type]
        b.healthy = True
        b.models = frozenset({"m"})
        out.append(b)
    return out


def test_least_prefers_fewest_in_flight_per_weight() -> None:
    a, b = backends(2)
    a.in_flight, b.in_flight = 3, 1
    bal = Balancer("least", seed=1)
    assert bal.choose([a, b], RouteInfo(), 0.0).index == 1
    b.spec = BackendSpec(url=b.url, weight=0.1)
    assert bal.choose([a, b], RouteInfo(), 0.0).index == 0


def test_round_robin_alternates_and_respects_weights() -> None:
    cands = backends(3)
    bal = Balancer("round-robin")
    picks = [bal.choose(cands, RouteInfo(), 0.0).index for _ in range(9)]
    assert Counter(picks) == {0: 3, 1: 3, 2: 3}
    cands[0].spec = BackendSpec(url=cands[0].url, weight=3)
    picks = [bal.choose(cands, RouteInfo(), 0.0).index for _ in range(1000)]
    assert 550 < Counter(picks)[0] < 650


def test_random_follows_weights() -> None:
    cands = backends(2)
    cands[1].spec = BackendSpec(url=cands[1].url, weight=4)
    bal = Balancer("random", seed=3)
    picks = Counter(bal.choose(cands, RouteInfo(), 0.0).index for _ in range(2000))
    assert 1450 < picks[1] < 1750


def test_prefix_keeps_a_conversation_on_one_backend() -> None:
    cands = backends(3)
    bal = Balancer("prefix", chunk=32, threshold=2)
    convos = [f"system prompt number {i} " * 20 for i in range(12)]
    first = {c: bal.choose(cands, RouteInfo(model="m", prompt=c), 0.0).index for c in convos}
    assert len(set(first.values())) > 1, "different prefixes spread over backends"
    for c in convos:
        d = bal.choose(cands, RouteInfo(model="m", prompt=c + " and a new user turn"), 0.0)
        assert d.index == first[c] and d.prefix_hit


def test_prefix_yields_to_load_past_the_threshold() -> None:
    cands = backends(2)
    bal = Balancer("prefix", chunk=32, threshold=2)
    prompt = "shared system prompt " * 10
    home = bal.choose(cands, RouteInfo(prompt=prompt), 0.0).index
    cands[home].in_flight = 3
    other = bal.choose(cands, RouteInfo(prompt=prompt + "x"), 0.0)
    assert other.index != home and not other.prefix_hit


def test_sessions_stick() -> None:
    cands = backends(4)
    bal = Balancer("round-robin")
    first = bal.choose(cands, RouteInfo(session="alice"), 0.0).index
    assert all(bal.choose(cands, RouteInfo(session="alice"), 0.0).index == first for _ in range(8))


def test_rendezvous_is_stable_and_moves_little() -> None:
    cands = backends(4)
    keys = [f"k{i}" for i in range(400)]
    before = {k: cands[rendezvous(k, cands, 0.0)].url for k in keys}
    assert before == {k: cands[rendezvous(k, cands, 0.0)].url for k in keys}
    fewer = cands[:3]
    after = {k: fewer[rendezvous(k, fewer, 0.0)].url for k in keys}
    moved = sum(1 for k in keys if before[k] != after[k])
    assert moved == sum(1 for k in keys if before[k] == cands[3].url)


def test_prompt_chunks_share_prefixes() -> None:
    a = prompt_chunks("x" * 100 + "a", 32)
    b = prompt_chunks("x" * 100 + "b", 32)
    assert a[:3] == b[:3] and a[3] != b[3]


def test_breaker_opens_half_opens_and_closes_with_slow_start() -> None:
    b = backends(1)[0]
    b.breaker = BreakerConfig(eject_failures=3, eject_time=10, slow_start=10)
    assert not b.failed(0.0) and not b.failed(0.0)
    assert b.failed(0.0) and b.state == OPEN
    assert not b.routable(5.0)
    assert b.routable(10.5) and b.state == HALF_OPEN
    b.acquire()
    assert not b.routable(10.6), "one trial at a time"
    b.release()
    assert b.failed(11.0) and b.state == OPEN and b.open_until == pytest.approx(31.0)
    assert b.routable(31.0)
    b.succeeded(31.0)
    assert b.state == CLOSED
    assert b.effective_weight(31.0) == pytest.approx(0.1)
    assert b.effective_weight(36.0) == pytest.approx(0.55)
    assert b.effective_weight(50.0) == 1.0


def test_refused_connection_ejects_at_once_and_probes_bring_it_back() -> None:
    b = backends(1)[0]
    assert b.failed(0.0, fatal=True) and b.state == OPEN
    assert b.probe_failed(1.0) is False and not b.healthy
    b.probe_ok(20.0)
    assert b.healthy and b.state == CLOSED


def test_limit_configured_or_learned() -> None:
    b = backends(1)[0]
    assert b.has_room()
    b.learned_limit = 2
    b.in_flight = 2
    assert not b.has_room()
    b.spec = BackendSpec(url=b.url, max_concurrency=3)
    assert b.has_room()


def test_backend_flags_and_yaml_shapes(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert parse_backend("http://a:1,weight=2,max_concurrency=8,api_key=ENV:K,models=x|y") == {
        "url": "http://a:1",
        "weight": "2",
        "max_concurrency": "8",
        "api_key": "ENV:K",
        "models": ["x", "y"],
    }
    with pytest.raises(ConfigError):
        parse_backend("http://a:1,colour=red")
    cfg = tmp_path / "g.yaml"
    cfg.write_text(
        "port: 9000\npolicy: least\nrequire_keys: true\nqueue_size: 4\nqueue_timeout: 2\n"
        "health_interval: 1\nhealth_timeout: 0.5\nkeys_db: /tmp/x.db\n"
        "backends:\n  - url: 10.0.0.2:8080/v1\n    weight: 2\n    max_concurrency: 4\n    api_key: ENV:UP\n"
        "    models: [a]\n"
    )
    s = load_settings(GatewaySettings, file=cfg, env={})
    assert s.port == 9000 and s.policy == "least" and s.require_keys and s.queue_size == 4
    assert s.backends[0].url == "http://10.0.0.2:8080" and s.backends[0].max_concurrency == 4
    monkeypatch.setenv("UP", "secret")
    assert s.backends[0].resolved_api_key() == "secret"
    env = {"HALO_BACKENDS": "http://a:1,weight=3,http://b:2"}
    s = load_settings(GatewaySettings, env=env)
    assert [(b.url, b.weight) for b in s.backends] == [("http://a:1", 3.0), ("http://b:2", 1.0)]
    s = load_settings(GatewaySettings, flags={"backends": ["http://c:3,max_concurrency=2"]}, env={})
    assert s.backends[0].max_concurrency == 2 and s.host == "127.0.0.1" and s.port == 8090
    assert s.policy == "prefix"


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_usage_chunk_is_read_and_stripped_even_when_split() -> None:
    events = [
        _sse({"choices": [{"delta": {"content": "hi"}}], "usage": None}),
        _sse({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
        b"data: [DONE]\n\n",
    ]
    raw = b"".join(events)
    for cut in range(1, len(raw)):
        sc = UsageScanner(strip=True)
        got = sc.feed(raw[:cut]) + sc.feed(raw[cut:]) + sc.flush()
        assert got == events[0] + events[2], cut
        assert (sc.prompt, sc.completion) == (7, 3)
    keep = UsageScanner(strip=False)
    assert keep.feed(raw) == raw and keep.completion == 3


def test_usage_on_a_content_chunk_keeps_the_content() -> None:
    sc = UsageScanner(strip=True)
    out = sc.feed(_sse({"choices": [{"delta": {"content": "x"}}], "usage": {"prompt_tokens": 1}}))
    assert json.loads(out[6:])["choices"][0]["delta"]["content"] == "x" and sc.prompt == 1


def test_body_usage() -> None:
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5}}).encode()
    assert body_usage(body) == (12, 5)
    assert body_usage(b'{"choices": []}') == (0, 0)


def test_key_cache() -> None:
    rec = KeyRecord(id="key_1", name="a", hint="h", created=0.0, models=("m",))
    cache = KeyCache({hash_key("sekrit"): rec})
    assert cache.lookup("Bearer sekrit", required=True) is rec
    assert cache.lookup("Bearer other", required=False) is None
    assert cache.lookup(None, required=False) is None
    with pytest.raises(AuthenticationError):
        cache.lookup("Bearer other", required=True)
    with pytest.raises(AuthenticationError):
        cache.lookup(None, required=True)
    cache.replace({})
    assert cache.lookup("Bearer sekrit", required=False) is None
    check_model(rec, "m")
    with pytest.raises(PermissionDeniedError):
        check_model(rec, "n")


def test_quotas_requests_and_tokens() -> None:
    rec = KeyRecord(id="k", name="team", hint="", created=0, rpm=3, tpm=100)
    q = Quotas()
    for _ in range(3):
        q.admit(rec, now=60.0)
    with pytest.raises(RateLimitError) as exc:
        q.admit(rec, now=61.0)
    assert "3 requests per minute" in exc.value.message and exc.value.headers["Retry-After"] == "59"
    # a minute later, half of the previous window still counts (sliding window)
    q.admit(rec, now=150.0)
    q2 = Quotas()
    q2.add_tokens(rec, 100, now=60.0)
    with pytest.raises(RateLimitError, match="100 tokens per minute"):
        q2.admit(rec, now=61.0)
    q2.admit(rec, now=200.0)
    split = Quotas(workers=3)
    split.admit(rec, now=0.0)
    with pytest.raises(RateLimitError):
        split.admit(rec, now=1.0)


def test_usage_buffer_by_day() -> None:
    buf = UsageBuffer()
    rec = KeyRecord(id="k", name="n", hint="", created=0)
    buf.add(rec, "m", 3, 4, now=0.0)
    buf.add(rec, "m", 1, 1, error=True, now=10.0)
    buf.add(None, "m", 1, 1, now=86400.0)
    taken = buf.take()
    assert taken[("1970-01-01", "k", "m")].requests == 2
    assert taken[("1970-01-01", "k", "m")].errors == 1
    assert taken[("1970-01-02", "-", "m")].prompt_tokens == 1
    assert buf.take() == {}
    buf.put_back(taken)
    assert buf.take()[("1970-01-01", "k", "m")].completion_tokens == 5


def test_balancer_rejects_unknown_policy() -> None:
    with pytest.raises(ValueError):
        Balancer("fastest")
    random.seed(0)
