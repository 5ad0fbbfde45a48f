"""Keys, quotas and usage: `halo keys`, `halo usage`, and a real `halo gateway` process across restarts."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from haloserve.cli import main
from haloserve.testing.gateway import gateway_process
from tests.gateway.conftest import BOTH_LINE_ENDS, MakeGateway, MakeUpstream

MSG = [{"role": "user", "content": "one two three"}]


def halo(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_keys_cli_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "k.db")
    code, out = halo(capsys, "keys", "--keys-db", db, "create", "team-a", "--rpm", "5", "--models", "m1,m2")
    secret = out.strip()
    assert code == 0 and secret.startswith("halo-") and len(secret) > 30
    code, out = halo(capsys, "keys", "list", "--keys-db", db, "--json")  # options after the action too
    (rec,) = json.loads(out)
    assert rec["name"] == "team-a" and rec["rpm"] == 5 and rec["models"] == ["m1", "m2"]
    assert secret not in (tmp_path / "k.db").read_bytes().decode("latin1"), "only the hash is stored"
    code, out = halo(capsys, "keys", "--keys-db", db, "list")
    assert code == 0 and "team-a" in out and secret not in out
    code, out = halo(capsys, "keys", "--keys-db", db, "revoke", "team-a")
    assert code == 0 and "revoked" in out
    assert json.loads(halo(capsys, "keys", "--keys-db", db, "--json", "list")[1]) == []
    assert halo(capsys, "keys", "--keys-db", db, "revoke", "team-a")[0] == 1


@pytest.mark.slow
def test_keys_quotas_and_models_through_the_gateway(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    up = make_upstream(models=["m1", "m2"])
    gw = make_gateway([up.url], require_keys=True)
    store = gw.gateway.store
    limited = store.create_key("limited", rpm=2, models=["m1"]).secret
    tokens = store.create_key("tokens", tpm=20).secret
    gw.run(gw.gateway.refresh_keys())
    with pytest.raises(openai.AuthenticationError):
        gw.client().chat.completions.create(model="m1", messages=MSG)
    with pytest.raises(openai.AuthenticationError):
        gw.client("halo-wrong").chat.completions.create(model="m1", messages=MSG)
    assert httpx.get(gw.base_url + "/models").status_code == 401
    client = gw.client(limited)
    assert [m.id for m in client.models.list()] == ["m1"]
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="m2", messages=MSG)
    client.chat.completions.create(model="m1", messages=MSG)
    client.chat.completions.create(model="m1", messages=MSG)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="m1", messages=MSG)
    assert "2 requests per minute" in exc.value.message
    assert exc.value.response.headers["Retry-After"]
    tclient = gw.client(tokens)
    tclient.chat.completions.create(model="m2", messages=MSG, max_tokens=20)  # 3 + 20 tokens
    with pytest.raises(openai.RateLimitError, match="20 tokens per minute"):
        tclient.chat.completions.create(model="m2", messages=MSG)
    store.revoke("tokens")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            tclient.chat.completions.create(model="m2", messages=MSG)
        except openai.AuthenticationError:
            break
        except openai.RateLimitError:
            time.sleep(0.1)
    else:
        pytest.fail("a revoked key kept working")


@BOTH_LINE_ENDS
@pytest.mark.slow
def test_streamed_usage_is_recorded_and_charged_to_the_token_quota(
    make_upstream: MakeUpstream, make_gateway: MakeGateway, line_end: str
) -> None:
    up = make_upstream(models=["m1"], line_end=line_end)
    gw = make_gateway([up.url], require_keys=True)
    secret = gw.gateway.store.create_key("streamer", tpm=20).secret
    gw.run(gw.gateway.refresh_keys())
    client = gw.client(secret)
    chunks = list(client.chat.completions.create(model="m1", messages=MSG, stream=True, max_tokens=20))
    assert all(c.usage is None for c in chunks), "the usage chunk the gateway asked for is not leaked"
    assert len("".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split()) == 20
    with pytest.raises(openai.RateLimitError, match="20 tokens per minute"):
        list(client.chat.completions.create(model="m1", messages=MSG, stream=True, max_tokens=1))
    gw.run(gw.gateway.flush_usage())
    rows = gw.gateway.store.usage()
    assert sum(r.prompt_tokens for r in rows) == 3 and sum(r.completion_tokens for r in rows) == 20


def _call_into(client: openai.OpenAI, result: list[object]) -> None:
    result.append(client.chat.completions.create(model="m1", messages=MSG, max_tokens=4))


@pytest.mark.process
def test_usage_survives_restart_and_sigterm_drains(
    make_upstream: MakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    up = make_upstream(models=["m1"], ttft_ms=300)
    db = tmp_path / "usage.db"
    code, out = halo(capsys, "keys", "--keys-db", str(db), "create", "alice")
    secret = out.strip()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(f"keys_db: {db}\nrequire_keys: true\nhealth_interval: 0.5\nbackends:\n  - url: {up.url}\n")
    for round_ in range(2):
        srv = gateway_process(["--config", str(cfg)], api_key=secret).start()
        try:
            client = srv.client()
            client.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
            # a request still running when SIGTERM arrives finishes (drain), and is counted
            result: list[object] = []
            t = threading.Thread(target=_call_into, args=(client, result))
            t.start()
            deadline = time.monotonic() + 5
            while up.stats.in_flight == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert srv.stop(signal.SIGTERM) == 0
            t.join()
            assert result and result[0].usage.completion_tokens == 4  # type: ignore[attr-defined]
        finally:
            srv.stop()
        code, out = halo(capsys, "usage", "--keys-db", str(db), "--json")
        (row,) = json.loads(out)
        assert row["key"] == "alice" and row["model"] == "m1"
        assert row["requests"] == 2 * (round_ + 1) and row["completion_tokens"] == 8 * (round_ + 1)
        assert row["prompt_tokens"] == 6 * (round_ + 1)
    code, out = halo(capsys, "usage", "--keys-db", str(db), "--by", "model")
    assert code == 0 and "m1" in out and "16" in out
    assert halo(capsys, "usage", "--keys-db", str(db), "--by", "colour")[0] == 2
