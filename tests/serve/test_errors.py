"""Bad input gets a clear OpenAI-shaped error and the server keeps serving."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.model


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:  # type: ignore[type-arg]
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    return err  # type: ignore[no-any-return]


CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"messages": [', None),
        (b"[]", None),
        (b'{"messages": "hi"}', "messages"),
        (b'{"messages": []}', "messages"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 3}', "n"),
        (b'{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}}', "logit_bias"),
        (b'{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"999999999": 1}}', "logit_bias"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stop": [""]}', "stop"),
        (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', "messages"),
    ],
)
def test_malformed_and_wrongly_typed_bodies_are_400(
    server: RemoteServer, body: bytes, param: str | None
) -> None:
    r = httpx.post(server.url + CHAT, content=body, headers={"content-type": "application/json"})
    err = assert_openai_error(r, 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert (err["param"] or "").startswith(param.split(".")[0]), err


def test_unknown_model_is_404(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_context_length_exceeded_names_the_numbers(server: RemoteServer) -> None:
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "hello " * 2000, "max_tokens": 10})
    err = assert_openai_error(r, 400, "context_length_exceeded")
    assert "1024" in err["message"] and "10 for the completion" in err["message"]
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 5000})
    assert "5000" in assert_openai_error(r, 400, "context_length_exceeded")["message"]


def test_unknown_route_and_method_and_oversized_body(server: RemoteServer) -> None:
    assert_openai_error(httpx.get(server.url + "/v1/nothing"), 404)
    assert_openai_error(httpx.get(server.url + CHAT), 405)
    big = b'{"prompt": "' + b"a" * (9 << 20) + b'"}'
    assert_openai_error(httpx.post(server.url + "/v1/completions", content=big), 413)


def test_queue_full_is_429_with_retry_after() -> None:
    with RemoteServer(["--parallel", "1", "--max-queue", "0", "--ctx-size", "2048"]) as srv:
        hold = {"prompt": "Once", "max_tokens": 1000, "ignore_eos": True, "stream": True}
        with (
            httpx.Client(timeout=60) as http,
            http.stream("POST", srv.base_url + "/completions", json=hold) as held,
        ):
            assert held.status_code == 200  # headers arrive with the first token: the slot is taken
            r = httpx.post(srv.base_url + "/completions", json={"prompt": "Hi", "max_tokens": 2})
            err = assert_openai_error(r, 429, "queue_full")
            assert err["type"] == "rate_limit_error"
            assert int(r.headers["retry-after"]) >= 1
        deadline = time.monotonic() + 10  # closing the held stream frees the slot
        while httpx.get(srv.url + "/health").json()["slots_processing"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ok = httpx.post(srv.base_url + "/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert ok.status_code == 200


def test_api_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    keyfile = tmp_path / "keys"
    keyfile.write_text("# team keys\nsk-from-file\n\n")
    args = ["--parallel", "1", "--ctx-size", "1024", "--api-key", "sk-flag", "--api-key-file", str(keyfile)]
    with RemoteServer(args, api_key="sk-flag") as srv:
        assert httpx.get(srv.url + "/health").status_code == 200  # health stays open for probes
        assert_openai_error(httpx.get(srv.base_url + "/models"), 401, "invalid_api_key")
        bad = httpx.get(srv.base_url + "/models", headers={"Authorization": "Bearer sk-nope"})
        assert_openai_error(bad, 401, "invalid_api_key")
        assert srv.client().models.list().data[0].id
        r = httpx.post(
            srv.base_url + "/completions",
            json={"prompt": "Hi", "max_tokens": 1},
            headers={"Authorization": "Bearer sk-from-file"},
        )
        assert r.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0).models.list()
        log = srv.log_tail(200)
    assert "sk-flag" not in log and "sk-from-file" not in log


def test_request_id_is_echoed_and_generated(server: RemoteServer) -> None:
    r = httpx.post(
        server.url + "/v1/completions",
        json={"prompt": "Hi", "max_tokens": 1},
        headers={"x-request-id": "abc-123"},
    )
    assert r.headers["x-request-id"] == "abc-123" and r.json()["id"] == "cmpl-abc-123"
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
    assert len(r.headers["x-request-id"]) == 32
