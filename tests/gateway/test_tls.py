"""https:// backends: trusted through --backend-ca (requests and probes), refused with a reason if not."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import httpx
import pytest

from haloserve.cli import main
from haloserve.gateway.http1 import ClientPool, ConnectFailed
from haloserve.testing.upstream import serve_in_thread
from haloserve.testing.upstream_config import UpstreamConfig
from tests.gateway.conftest import MakeGateway

DATA = Path(__file__).parent / "data"
CA = DATA / "ca.pem"
MSG = [{"role": "user", "content": "hello there"}]


def _server_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(DATA / "server.pem", DATA / "server.key")
    return ctx


@pytest.fixture
def tls_upstream():  # type: ignore[no-untyped-def]
    with serve_in_thread(UpstreamConfig(models=["secure"], default_max_tokens=6), tls=_server_tls()) as up:
        assert up.url.startswith("https://127.0.0.1:")
        yield up


def test_https_backend_trusted_through_backend_ca(tls_upstream, make_gateway: MakeGateway) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway([tls_upstream.url], backend_ca=CA)
    health = httpx.get(gw.url + "/health").json()
    assert health["healthy_backends"] == 1 and health["backends"][0]["error"] is None
    assert [m["id"] for m in httpx.get(gw.base_url + "/models").json()["data"]] == ["secure"]  # discovery
    client = gw.client()
    reply = client.chat.completions.create(model="secure", messages=MSG)
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model="secure", messages=MSG, stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 6
    assert tls_upstream.stats.by_path.get("/v1/chat/completions") == 2


def test_untrusted_certificate_is_refused_with_the_reason(tls_upstream, make_gateway: MakeGateway) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway([tls_upstream.url])
    backend = httpx.get(gw.url + "/health").json()["backends"][0]
    assert not backend["healthy"]
    assert "certificate" in backend["error"] and "--backend-ca" in backend["error"]
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "secure", "messages": MSG})
    assert r.status_code in (404, 503)  # no healthy backend knows the model yet
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert not tls_upstream.stats.by_path.get("/v1/chat/completions")


def test_the_proxy_client_verifies_certificates() -> None:
    async def attempt(pool: ClientPool, url: str) -> int:
        body = json.dumps({"model": "secure", "messages": MSG}).encode()
        resp = await pool.request(url, "/v1/chat/completions", body, {"Content-Type": "application/json"}, 10)
        await resp.read()
        return resp.status

    with serve_in_thread(UpstreamConfig(models=["secure"]), tls=_server_tls()) as up:
        with pytest.raises(ConnectFailed, match="certificate"):
            asyncio.run(attempt(ClientPool(connect_timeout=5), up.url))
        trusted = ssl.create_default_context(cafile=str(CA))
        assert asyncio.run(attempt(ClientPool(connect_timeout=5, ssl_context=trusted), up.url)) == 200


def test_bad_backend_ca_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["gateway", "--backend", "https://127.0.0.1:1", "--keys-db", str(tmp_path / "k.db")]
    assert main([*base, "--backend-ca", str(tmp_path / "missing.pem")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--backend-ca" in err and "no such file" in err and len(err.splitlines()) == 1
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert main([*base, "--backend-ca", str(junk)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a PEM file" in err and len(err.splitlines()) == 1
