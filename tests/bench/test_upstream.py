"""The fake OpenAI upstream: wire shapes (checked with the official openai client), knobs, counters."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import aiohttp
import openai
import pytest

from haloserve.testing.upstream import FakeUpstream
from haloserve.testing.upstream_cli import spawn
from haloserve.testing.upstream_config import UpstreamConfig, output_tokens, prompt_tokens


def client(up: FakeUpstream, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=up.url + "/v1", api_key=key, max_retries=0)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_models_health_and_non_streaming_shapes(upstream: FakeUpstream) -> None:
    upstream.configure(models=["a", "b"])
    c = client(upstream)
    assert [m.id for m in c.models.list()] == ["a", "b"]
    assert get(upstream.url + "/health") == {"status": "ok"}
    r = c.chat.completions.create(
        model="b", messages=[{"role": "user", "content": "one two three"}], max_tokens=5
    )
    assert (
        r.choices[0].message.content == " lorem ipsum dolor sit amet"
        and r.choices[0].finish_reason == "length"
    )
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (3, 5, 8)
    t = c.completions.create(model="a", prompt="x y", max_tokens=2)
    assert t.choices[0].text == " lorem ipsum" and t.usage.prompt_tokens == 2


def test_streaming_chunks_and_include_usage(upstream: FakeUpstream) -> None:
    c = client(upstream)
    chunks = list(
        c.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == " lorem ipsum dolor"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    plain = list(c.completions.create(model="fake-model", prompt="p", max_tokens=2, stream=True))
    assert all(ch.usage is None for ch in plain) and plain[-1].choices[0].finish_reason == "length"


def test_errors_in_openai_shape(upstream: FakeUpstream) -> None:
    c = client(upstream)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="fake-model", prompt=None)  # type: ignore[arg-type]
    upstream.configure(api_key="sekrit")
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    assert [m.id for m in client(upstream, "sekrit").models.list()] == ["fake-model"]


def test_length_rules_eos_ignore_eos_min_tokens() -> None:
    cfg = UpstreamConfig(eos_after=4, default_max_tokens=16)
    assert output_tokens({}, cfg, chat=True) == (4, "stop")
    assert output_tokens({"max_tokens": 10, "ignore_eos": True}, cfg, chat=True) == (10, "length")
    assert output_tokens({"max_tokens": 10, "min_tokens": 7}, cfg, chat=False) == (7, "stop")
    assert output_tokens({"max_completion_tokens": 3, "max_tokens": 9}, cfg, chat=True) == (3, "length")
    assert output_tokens({"max_tokens": 2}, UpstreamConfig(), chat=False) == (2, "length")
    assert (
        prompt_tokens({"messages": [{"content": "a b"}, {"content": [{"type": "text", "text": "c"}]}]}) == 3
    )
    assert prompt_tokens({"prompt": [1, 2, 3, 4]}) == 4


def test_timing_is_on_absolute_deadlines(upstream: FakeUpstream) -> None:
    c = client(upstream)
    c.models.list()  # warm the client and its connection
    upstream.configure(ttft_ms=60, itl_ms=15)
    t0 = time.perf_counter()
    stamps = []
    for ch in c.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "x"}], max_tokens=6, stream=True
    ):
        if ch.choices and ch.choices[0].delta.content:
            stamps.append(time.perf_counter() - t0)
    assert len(stamps) == 6
    assert 0.059 < stamps[0] < 0.120  # generous: CI machines are busy
    # Token i is due at receipt + ttft + i * itl: never early, and a late first token does not push the
    # rest back (so the gap may be shorter than 5 x itl when the first token was late).
    assert stamps[-1] >= 0.060 + 5 * 0.015 - 0.001
    assert stamps[-1] - stamps[0] < 0.075 + 0.040


def test_runtime_config_stats_and_reset(upstream: FakeUpstream) -> None:
    cfg = post(upstream.url + "/fake/config", {"itl_ms": 1, "seed": 5})
    assert cfg["itl_ms"] == 1 and upstream.config.itl_ms == 1
    with pytest.raises(urllib.error.HTTPError) as e:
        post(upstream.url + "/fake/config", {"ttft_ms": -1})
    assert e.value.code == 400
    client(upstream).completions.create(model="fake-model", prompt="p", max_tokens=2)
    stats = get(upstream.url + "/fake/stats")
    assert (
        stats["by_path"] == {"/v1/completions": 1}
        and stats["completed"] == 0
        and stats["by_status"] == {"200": 1}
    )
    post(upstream.url + "/fake/reset", {})
    assert get(upstream.url + "/fake/stats")["requests"] == 0


async def _disconnect_midway(up: FakeUpstream) -> dict:
    body = {"model": "fake-model", "prompt": "p", "max_tokens": 50, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(up.url + "/v1/completions", json=body) as r:
        await r.content.readany()
        assert up.stats.in_flight == 1
    for _ in range(100):
        if up.stats.cancelled:
            break
        await asyncio.sleep(0.01)
    return up.stats.as_dict()


def test_client_disconnect_is_counted_as_cancelled() -> None:
    async def main() -> dict:
        async with FakeUpstream(UpstreamConfig(itl_ms=20)) as up:
            return await _disconnect_midway(up)

    stats = asyncio.run(main())
    assert stats["cancelled"] == 1 and stats["in_flight"] == 0 and stats["completed"] == 0


@pytest.mark.process
def test_child_process_with_flags_and_timings() -> None:
    with spawn(UpstreamConfig(models=["m1", "m2"], ttft_ms=5, record_timings=True)) as url:
        assert [m["id"] for m in get(url + "/v1/models")["data"]] == ["m1", "m2"]
        req = urllib.request.Request(
            url + "/v1/completions",
            json.dumps({"model": "m2", "prompt": "a", "max_tokens": 3, "stream": True}).encode(),
            {"Content-Type": "application/json", "X-Request-Id": "abc"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
        (rec,) = get(url + "/fake/timings")["requests"]
        assert rec["id"] == "abc" and len(rec["tokens"]) == 3
        assert 0.004 < rec["tokens"][0] - rec["received"] < 0.05


def test_words_replace_the_generated_text_and_survive_the_command_line(upstream: FakeUpstream) -> None:
    from haloserve.testing.upstream_cli import _parser, config_flags, config_from_args

    words = ["<b>a, b</b>", ' "c"']
    upstream.configure(words=words)
    c = client(upstream)
    msgs = [{"role": "user", "content": "x"}]
    r = c.chat.completions.create(model="fake-model", messages=msgs, max_tokens=3)  # type: ignore[arg-type]
    assert r.choices[0].message.content == '<b>a, b</b> "c"<b>a, b</b>'
    stream = c.chat.completions.create(
        model="fake-model", messages=msgs, max_tokens=2, stream=True  # type: ignore[arg-type]
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == '<b>a, b</b> "c"'
    flags = config_flags(UpstreamConfig(words=words))
    assert config_from_args(_parser().parse_args(flags)).words == words  # commas and quotes kept
