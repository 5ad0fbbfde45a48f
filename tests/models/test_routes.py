"""The lifecycle API over HTTP with fake engines: router-mode shapes, errors, keys, health and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from openai import OpenAI

from haloserve.config.serve import ServeSettings
from haloserve.engine.fake import FakeEngine
from haloserve.server.app import create_app, create_models_app
from haloserve.testing.inproc import InProcessServer
from tests.models.conftest import FakeFleet

KEY = "sk-models-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def server(fleet: Callable[..., FakeFleet]) -> Iterator[InProcessServer]:
    f = fleet(a=40, b=40, broken=10, budget=100)
    f.error["broken"] = "unknown model architecture: 'nonsense'"
    mgr = f.manager([f.entry("a", aliases=("alpha",)), f.entry("b", ttl=300.0), f.entry("broken")])
    app = create_models_app(ServeSettings(engine="fake", api_key=[KEY]), mgr)
    with InProcessServer(app) as srv:
        yield srv


def post(
    srv: InProcessServer, path: str, body: object, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, headers=AUTH if headers is None else headers, timeout=30)


def cards(srv: InProcessServer, path: str = "/v1/models") -> dict[str, dict[str, object]]:
    body = httpx.get(srv.url + path, headers=AUTH, timeout=30).json()
    assert body["object"] == "list"
    return {c["id"]: c for c in body["data"]}


def test_router_mode_list_load_and_unload(server: InProcessServer) -> None:
    listed = cards(server, "/models")
    assert set(listed) == {"a", "b", "broken"}
    a = listed["a"]
    assert {"id", "object", "owned_by", "created", "aliases", "status", "halo"} <= set(a)
    assert a["object"] == "model" and a["aliases"] == ["alpha"] and a["status"] == {"value": "unloaded"}
    halo = a["halo"]
    assert isinstance(halo, dict)
    assert halo["memory_bytes"] == 40 and halo["pinned"] is False and halo["last_used"] is None
    assert halo["settings"]["parallel"] == 2 and cards(server)["b"]["halo"]["ttl"] == 300.0  # type: ignore[index]

    r = post(server, "/models/load", {"model": "a"})
    assert r.status_code == 200 and r.json() == {"success": True}
    a = cards(server)["a"]
    assert a["status"] == {"value": "loaded"} and a["meta"]["n_parallel"] == 2  # type: ignore[index]
    assert isinstance(a["halo"]["last_used"], float)  # type: ignore[index]

    props = httpx.get(server.url + "/props", params={"model": "alpha"}, headers=AUTH, timeout=30)
    assert (
        props.status_code == 200 and props.json()["total_slots"] == 2 and props.json()["model_alias"] == "a"
    )
    assert (
        httpx.get(server.url + "/props", params={"model": "b"}, headers=AUTH, timeout=30).status_code == 503
    )
    tokens = post(server, "/tokenize", {"model": "a", "content": "hi"}).json()["tokens"]
    assert post(server, "/detokenize", {"model": "a", "tokens": tokens}).json() == {"content": "hi"}

    again = post(server, "/models/load", {"model": "a"})
    assert again.status_code == 400 and "already loaded" in again.json()["error"]["message"]
    missing = post(server, "/models/load", {"model": "gpt-4"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    not_loaded = post(server, "/models/unload", {"model": "b"})
    assert not_loaded.status_code == 400 and "not loaded" in not_loaded.json()["error"]["message"]
    bad = post(server, "/models/load", {"name": "a"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"

    r = post(server, "/models/unload", {"model": "alpha"})
    assert r.status_code == 200 and r.json() == {"success": True}
    assert cards(server)["a"]["status"] == {"value": "unloaded"}


def test_requests_load_their_model_and_a_broken_one_fails_alone(server: InProcessServer) -> None:
    client = OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(
        model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.model == "b" and reply.choices[0].message.content
    r = post(
        server, "/v1/chat/completions", {"model": "broken", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 503 and r.headers["Retry-After"]
    err = r.json()["error"]
    assert err["code"] == "model_load_failed" and "'broken'" in err["message"]
    assert "unknown model architecture" in err["message"]
    broken = cards(server)["broken"]["status"]
    assert broken == {
        "value": "failed",
        "failed": True,
        "error": "RuntimeError: unknown model architecture: 'nonsense'",
    }
    completion = client.completions.create(model="alpha", prompt="1, 2,", max_tokens=3)  # by its alias
    assert completion.model == "a"
    health = httpx.get(server.url + "/health", timeout=30)
    assert health.status_code == 200
    assert health.json()["models"] == {"a": "loaded", "b": "loaded", "broken": "failed"}
    metrics = httpx.get(server.url + "/metrics", headers=AUTH, timeout=30).text
    assert 'halo_model_requests_total{model="b",status="200"} 1.0' in metrics
    assert 'halo_model_loads_total{model="a"} 1.0' in metrics
    assert 'halo_model_load_failures_total{model="broken"} 1.0' in metrics
    assert 'halo_model_memory_bytes{model="b"} 40.0' in metrics
    assert 'halo_model_tokens_total{kind="generation",model="b"} 4.0' in metrics


def test_the_lifecycle_api_needs_the_key(server: InProcessServer) -> None:
    assert httpx.get(server.url + "/models", timeout=30).status_code == 401
    assert post(server, "/models/load", {"model": "a"}, headers={}).status_code == 401
    assert (
        post(server, "/models/unload", {"model": "a"}, headers={"Authorization": "Bearer no"}).status_code
        == 401
    )
    assert cards(server)["a"]["status"] == {"value": "unloaded"}  # nothing was loaded


def test_a_single_model_server_lists_its_model_in_the_same_shape() -> None:
    settings = ServeSettings(engine="fake", model_alias="solo")
    with InProcessServer(create_app(settings, FakeEngine(settings))) as srv:
        card = httpx.get(srv.url + "/v1/models", timeout=30).json()["data"][0]
        assert card["id"] == "solo" and card["status"] == {"value": "loaded"} and card["halo"]["pinned"]
        assert httpx.get(srv.url + "/models", timeout=30).json()["data"] == [card]
        r = httpx.post(srv.url + "/models/load", json={"model": "solo"}, timeout=30)
        assert r.status_code == 400 and "serves one model" in r.json()["error"]["message"]
