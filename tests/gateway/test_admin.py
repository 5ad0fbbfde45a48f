"""The gateway's admin API (/admin/keys, /admin/usage, /admin/backends) on a real gateway on loopback."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import httpx
import openai
import pytest

from haloserve.config.gateway import GatewaySettings
from haloserve.errors import ConfigError
from haloserve.gateway.checks import check_settings
from haloserve.testing.gateway import ThreadedGateway
from tests.gateway.conftest import MakeGateway, MakeUpstream

ADMIN = "admin-secret-0123456789"
MSG = [{"role": "user", "content": "one two three"}]


def call(gw: ThreadedGateway, method: str, path: str, key: str | None = ADMIN, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.request(method, gw.url + path, headers=headers, timeout=10, **kw)


def assert_error(resp: httpx.Response, status: int, words: str = "") -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert words in err["message"]
    return err


def test_disabled_without_an_admin_key(make_upstream: MakeUpstream, make_gateway: MakeGateway) -> None:
    gw = make_gateway([make_upstream().url])
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/backends")):
        err = assert_error(call(gw, method, path), 404, "admin API disabled")
        assert err["code"] == "admin_disabled"


def test_admin_key_is_required_and_compared(make_upstream: MakeUpstream, make_gateway: MakeGateway) -> None:
    gw = make_gateway([make_upstream().url], admin_key=ADMIN)
    assert_error(call(gw, "GET", "/admin/keys", key=None), 401, "missing admin key")
    assert_error(call(gw, "GET", "/admin/keys", key=ADMIN + "x"), 401, "invalid admin key")
    assert_error(call(gw, "GET", "/admin/keys", key=ADMIN[:-1]), 401, "invalid admin key")
    # an API key is not an admin key
    api = call(gw, "POST", "/admin/keys", json={"name": "user"}).json()["key"]
    assert_error(call(gw, "GET", "/admin/keys", key=api), 401)
    assert call(gw, "GET", "/admin/keys").status_code == 200
    assert_error(call(gw, "GET", "/admin/nothing"), 404)
    assert_error(call(gw, "PUT", "/admin/keys"), 404)
    assert gw.gateway.admin.key_hash == hashlib.sha256(ADMIN.encode()).digest(), "a hash is held"


def test_key_lifecycle_with_the_openai_client(make_upstream: MakeUpstream, make_gateway: MakeGateway) -> None:
    up = make_upstream(models=["m1", "m2"])
    gw = make_gateway([up.url], admin_key=ADMIN, require_keys=True)
    made = call(gw, "POST", "/admin/keys", json={"name": "team-a", "rpm": 100, "tpm": 5000, "models": ["m1"]})
    assert made.status_code == 201, made.text
    rec = made.json()
    secret = rec["key"]
    assert secret.startswith("halo-") and rec["name"] == "team-a" and rec["models"] == ["m1"]
    assert rec["rpm"] == 100 and rec["tpm"] == 5000 and rec["revoked"] is None

    client = gw.client(secret)
    reply = client.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="m2", messages=MSG, max_tokens=4)

    listed = call(gw, "GET", "/admin/keys")
    assert listed.status_code == 200 and secret not in listed.text, "the secret is shown once"
    (item,) = listed.json()["data"]
    assert item["id"] == rec["id"] and item["hint"] == rec["hint"] and "key" not in item

    usage = call(gw, "GET", "/admin/usage", params={"by": "key,model"}).json()
    assert usage["by"] == ["key", "model"]
    rows = {(r["key"], r["model"]): r for r in usage["data"]}
    assert rows[("team-a", "m1")]["requests"] == 1
    assert rows[("team-a", "m1")]["completion_tokens"] == 4
    assert rows[("team-a", "m1")]["total_tokens"] == 4 + 3
    assert call(gw, "GET", "/admin/usage", params={"since": "2999-01-01"}).json()["data"] == []

    revoked = call(gw, "DELETE", "/admin/keys/team-a")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is not None
    with pytest.raises(openai.AuthenticationError):  # at once, not after the next key refresh
        client.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
    assert_error(call(gw, "DELETE", "/admin/keys/team-a"), 404, "no active key")
    assert call(gw, "GET", "/admin/keys").json()["data"][0]["revoked"] is not None


def test_bad_requests_get_400(make_upstream: MakeUpstream, make_gateway: MakeGateway) -> None:
    gw = make_gateway([make_upstream().url], admin_key=ADMIN)
    bad_bodies: list[Any] = [
        b"{not json",
        b"[1, 2]",
        b"[" * 20_000,
        {"rpm": 5},
        {"name": ""},
        {"name": "a", "rpm": -1},
        {"name": "a", "tpm": "many"},
        {"name": "a", "models": "m1"},
        {"name": "a", "admin": True},
    ]
    for body in bad_bodies:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        assert_error(call(gw, "POST", "/admin/keys", **kw), 400)
    assert_error(call(gw, "POST", "/admin/keys", content=b" " * 70_000), 413)
    assert call(gw, "GET", "/admin/keys").json()["data"] == [], "nothing was created"
    assert_error(call(gw, "GET", "/admin/usage", params={"by": "key,colour"}), 400, "by takes")
    assert_error(call(gw, "GET", "/admin/usage", params={"since": "yesterday"}), 400, "YYYY-MM-DD")
    for _ in range(2):
        assert call(gw, "POST", "/admin/keys", json={"name": "twin"}).status_code == 201
    err = assert_error(call(gw, "DELETE", "/admin/keys/twin"), 400, "revoke one by id")
    assert err["code"] == "ambiguous_key"


def test_backends(make_upstream: MakeUpstream, make_gateway: MakeGateway) -> None:
    up = make_upstream(models=["m1", "m2"])
    gw = make_gateway([up.url, "http://127.0.0.1:9,weight=2"], admin_key=ADMIN)
    data = call(gw, "GET", "/admin/backends").json()["data"]
    by_url = {b["url"]: b for b in data}
    good, down = by_url[up.url], by_url["http://127.0.0.1:9"]
    assert good["healthy"] is True and good["circuit"] == "closed" and good["models"] == ["m1", "m2"]
    assert down["healthy"] is False and down["weight"] == 2.0 and down["error"]
    assert {"in_flight", "limit", "requests", "errors"} <= set(good)


def test_admin_key_from_the_environment_and_never_shown(
    make_upstream: MakeUpstream,
    make_gateway: MakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("HALO_TEST_ADMIN", ADMIN)
    caplog.set_level(logging.DEBUG)
    gw = make_gateway([make_upstream().url], admin_key="ENV:HALO_TEST_ADMIN")
    assert call(gw, "GET", "/admin/keys").status_code == 200
    assert call(gw, "GET", "/admin/keys", key="ENV:HALO_TEST_ADMIN").status_code == 401
    assert ADMIN not in caplog.text
    assert GatewaySettings(admin_key=ADMIN).public_dict()["admin_key"] == "***"
    monkeypatch.delenv("HALO_TEST_ADMIN")
    with pytest.raises(ConfigError, match="HALO_TEST_ADMIN is not set"):
        check_settings(GatewaySettings(backends=["http://127.0.0.1:9"], admin_key="ENV:HALO_TEST_ADMIN"))
