"""`halo gateway` as a real process: config errors, SIGHUP reload, several workers on one port."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from haloserve.cli import main
from haloserve.testing.gateway import gateway_process
from haloserve.testing.remote import free_port
from tests.gateway.conftest import MakeUpstream


def test_no_backends_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "--keys-db", str(tmp_path / "k.db")]) == 2
    assert "no backends" in capsys.readouterr().err
    assert main(["gateway", "--backend", "http://a:1,colour=red"]) == 2
    assert main(["gateway", "--backend", "http://a:1", "--policy", "fastest"]) == 2


@pytest.mark.process
def test_sighup_reloads_the_config_file(make_upstream: MakeUpstream, tmp_path: Path) -> None:
    a = make_upstream(models=["m1"])
    b = make_upstream(models=["m2"])
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(f"keys_db: {tmp_path / 'k.db'}\nhealth_interval: 0.5\nbackends:\n  - url: {a.url}\n")
    with gateway_process(["--config", str(cfg)]) as gw:
        assert [m["id"] for m in httpx.get(gw.base_url + "/models").json()["data"]] == ["m1"]
        cfg.write_text(cfg.read_text() + f"  - url: {b.url}\n")
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while len(httpx.get(gw.url + "/health").json()["backends"]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        reply = gw.client().chat.completions.create(model="m2", messages=[{"role": "user", "content": "x"}])
        assert reply.model == "m2"


@pytest.mark.process
def test_workers_share_the_port_keys_and_usage(
    make_upstream: MakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    up = make_upstream()
    db = tmp_path / "k.db"
    assert main(["keys", "--keys-db", str(db), "create", "w"]) == 0
    key = capsys.readouterr().out.strip()
    port = free_port()
    args = ["--backend", up.url, "--keys-db", str(db), "--require-keys", "--workers", "2", "--no-access-log"]
    srv = gateway_process(args, port=port, api_key=key)
    with srv:
        for _ in range(3):  # new connections: the kernel spreads them over the workers
            client = srv.client()
            for _ in range(10):
                client.chat.completions.create(
                    model="fake-model", messages=[{"role": "user", "content": "a b"}]
                )
            client.close()
        assert httpx.post(srv.base_url + "/chat/completions", json={"model": "fake-model"}).status_code == 401
    assert main(["usage", "--keys-db", str(db), "--json", "--by", "key"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["requests"] == 30 and row["prompt_tokens"] == 60 and row["key"] == "w"
