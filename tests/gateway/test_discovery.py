"""--backends-file: backends that another program (halo cluster) adds and removes while the gateway runs."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from haloserve.config.gateway import BackendSpec, GatewaySettings
from haloserve.errors import ConfigError
from haloserve.gateway.backends import CLOSED, OPEN, Backend
from haloserve.gateway.checks import check_settings
from haloserve.gateway.discovery import BackendsFile, parse_backends
from haloserve.testing.gateway import ThreadedGateway
from tests.gateway.conftest import MakeGateway, MakeUpstream

MSG = [{"role": "user", "content": "hello there"}]
ENTER = 5.0  # issue 16: added replicas enter the pool, removed ones leave it, within 5 s


def write(path: Path, backends: list[dict[str, Any]]) -> None:
    """Atomically, as halo cluster writes it (temporary file, then os.replace)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"backends": backends}))
    os.replace(tmp, path)


def wait_for(cond: Callable[[], bool], limit: float = ENTER) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < limit, f"not within {limit:g}s"
        time.sleep(0.05)
    return time.monotonic() - start


def backends(gw: ThreadedGateway) -> dict[str, dict[str, Any]]:
    return {b["url"]: b for b in httpx.get(gw.url + "/health").json()["backends"]}


def test_parse_backends() -> None:
    text = '{"backends": [{"url": "10.0.0.2:8080/v1", "weight": 2, "labels": {"node": "n2"}}]}'
    (spec,) = parse_backends(text)
    assert spec.url == "http://10.0.0.2:8080" and spec.weight == 2 and spec.labels == {"node": "n2"}
    assert parse_backends('{"backends": []}') == []
    for bad, words in [
        ("{", "not JSON"),
        ("[]", "expected"),
        ('{"backends": {}}', "expected"),
        ('{"backends": [{"weight": 2}]}', "backends[0].url"),
        ('{"backends": [{"url": "http://a", "weight": 0}]}', "backends[0].weight"),
        ('{"backends": [{"url": "http://a", "colour": "red"}]}', "backends[0].colour"),
        ('{"backends": [{"url": "http://a"}, {"url": "http://a/"}]}', "listed twice"),
        ('{"backends": [{"url": "http://a", "api_key": "ENV:HALO_TEST_UNSET_KEY"}]}', "HALO_TEST_UNSET_KEY"),
    ]:
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_backends(bad)


def test_bad_file_keeps_the_last_good_list_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "backends.json"
    f = BackendsFile(None)
    assert f.poll(path) is False and f.specs == [], "a missing file is an empty list at start"
    write(path, [{"url": "http://a:1"}])
    assert f.poll(path) is True and [s.url for s in f.specs] == ["http://a:1"]
    assert f.poll(path) is False, "unchanged: not read again"
    path.write_text('{"backends": [')
    with caplog.at_level(logging.ERROR, logger="haloserve.gateway"):
        for _ in range(3):
            assert f.poll(path) is False
    assert [s.url for s in f.specs] == ["http://a:1"]
    assert len([r for r in caplog.records if "keeping the last good list" in r.message]) == 1
    path.unlink()
    assert f.poll(path) is False and [s.url for s in f.specs] == ["http://a:1"]
    write(path, [{"url": "http://a:1"}, {"url": "http://b:2", "models": ["m"]}])
    assert f.poll(path) is True and [s.url for s in f.specs] == ["http://a:1", "http://b:2"]
    assert f.poll(None) is True and f.specs == []


def test_a_backend_never_healthy_is_kept_out_not_ejected() -> None:
    b = Backend(BackendSpec(url="http://a:1"))
    for t in (0.0, 1.0, 2.0):  # a replica still loading its model: /health 503
        assert b.probe_failed(t) is False and b.state == CLOSED and b.ejections == 0
        assert not b.routable(t)
    b.probe_ok(2.5)
    assert b.routable(2.5), "in at its first 200, not eject_time later"
    assert b.probe_failed(3.0) is True and b.state == OPEN, "once in, a failed probe ejects it"


def test_only_static_backends_or_a_file_are_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--backends-file"):
        check_settings(GatewaySettings())
    check_settings(GatewaySettings(backends_file=tmp_path / "later.json"))


@pytest.mark.slow
def test_backends_enter_when_healthy_and_leave_when_removed(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    static = make_upstream(models=["shared"])
    path = tmp_path / "backends.json"
    write(path, [])
    gw = make_gateway([static.url], backends_file=path)
    client = gw.client()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="only-b", messages=MSG, max_tokens=2)

    b = make_upstream(models=["shared", "only-b"])
    sick = make_upstream(models=["only-sick"], health_status=503)
    write(path, [{"url": b.url, "labels": {"node": "n2"}}, {"url": sick.url, "weight": 3}])
    took = wait_for(lambda: backends(gw).get(b.url, {}).get("healthy") is True)
    info = backends(gw)[b.url]
    assert info["source"] == "file" and info["labels"] == {"node": "n2"}
    assert info["models"] == ["only-b", "shared"]
    assert backends(gw)[static.url]["source"] == "static"
    assert client.chat.completions.create(model="only-b", messages=MSG, max_tokens=2).choices
    print(f"entered the pool {took:.2f}s after the file changed")

    # up, but its /health says 503: listed, never sent a request
    assert sick.url in backends(gw) and backends(gw)[sick.url]["healthy"] is False
    for _ in range(5):
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="only-sick", messages=MSG, max_tokens=2)
        assert err.value.status_code == 503
    assert sick.stats.by_path.get("/v1/chat/completions", 0) == 0
    sick.configure(health_status=200)
    wait_for(lambda: backends(gw)[sick.url]["healthy"] is True)
    assert client.chat.completions.create(model="only-sick", messages=MSG, max_tokens=2).choices

    # removed while a stream runs on it: the stream finishes, then the backend is gone
    b.configure(itl_ms=40)
    done: list[int] = []

    def stream() -> None:
        chunks = client.chat.completions.create(model="only-b", messages=MSG, max_tokens=40, stream=True)
        done.append(sum(1 for c in chunks if c.choices and c.choices[0].delta.content))

    t = threading.Thread(target=stream)
    t.start()
    wait_for(lambda: b.stats.in_flight == 1)
    write(path, [{"url": sick.url, "weight": 3}])
    wait_for(lambda: b.url not in backends(gw))
    t.join(10)
    assert done == [40], "the in-flight stream on the removed backend finished"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="only-b", messages=MSG, max_tokens=2)


@pytest.mark.slow
def test_a_bad_file_keeps_serving_and_sighup_rereads(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    b = make_upstream(models=["only-b"])
    path = tmp_path / "backends.json"
    write(path, [{"url": b.url}])
    gw = make_gateway([], backends_file=path)  # no static backends at all
    assert backends(gw)[b.url]["healthy"] is True, "the file is read at start"
    path.write_text("{oops")
    time.sleep(1.5)  # more than one upkeep round
    assert gw.client().chat.completions.create(model="only-b", messages=MSG, max_tokens=2).choices
    c = make_upstream(models=["only-c"])
    write(path, [{"url": c.url}])
    assert gw.run(gw.gateway.reload_now()), "SIGHUP re-reads the backends file"
    assert set(backends(gw)) == {c.url}
