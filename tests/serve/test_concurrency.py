"""Continuous batching: concurrent streams share decode steps; disconnects free slots; chunked prefill."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.model


def test_sixteen_concurrent_streams_share_decode_steps(server: RemoteServer) -> None:
    multi_before = server.metric("halo_engine_multi_sequence_steps_total")

    async def one(client, i: int) -> tuple[str, int]:  # type: ignore[no-untyped-def]
        stream = await client.chat.completions.create(
            model="",
            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        text, usage = "", 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return text, usage

    async def main() -> list[tuple[str, int]]:
        client = server.async_client()
        return await asyncio.gather(*(one(client, i) for i in range(16)))

    results = asyncio.run(main())
    assert len(results) == 16
    assert all(usage == 32 and text for text, usage in results)
    assert server.metric("halo_engine_multi_sequence_steps_total") > multi_before
    assert server.metric("halo_engine_max_sequences_per_step") >= 8


def test_client_disconnect_frees_its_slot(server: RemoteServer) -> None:
    body = {
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 900,
        "stream": True,
        "ignore_eos": True,
    }
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", server.base_url + "/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert httpx.get(server.url + "/health").json()["slots_processing"] >= 1
    # The connection is closed: the slot must be released at the next engine step.
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/health").json()["slots_processing"] != 0:
        assert time.monotonic() < deadline, "slot still busy after the client disconnected"
        time.sleep(0.05)
    assert server.metric('halo_requests_total{endpoint="chat",status="499"}') >= 1


def test_non_streaming_disconnect_frees_its_slot(server: RemoteServer) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 900, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/health").json()["slots_processing"] != 0:
        assert time.monotonic() < deadline, "slot still busy after the client went away"
        time.sleep(0.05)
    # The handler itself must finish too (not wait forever for output that will never come).
    while server.metric('halo_requests_total{endpoint="completions",status="499"}') < 1:
        assert time.monotonic() < deadline, "the request's handler never finished"
        time.sleep(0.05)


def test_long_prompt_is_prefilled_in_chunks_while_others_decode() -> None:
    args = ["--parallel", "2", "--ctx-size", "8192", "--ubatch-size", "128", "--threads", "2"]
    with RemoteServer(args) as srv:
        client = srv.client()
        steps0 = srv.metric("halo_engine_steps_total")

        async def main() -> tuple[int, int]:
            aclient = srv.async_client()
            runner = await aclient.completions.create(
                model="",
                prompt="Once upon a time",
                max_tokens=120,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            got = 0
            long_task = None
            async for _chunk in runner:
                got += 1
                if got == 5:  # the first stream is decoding: now send a long prompt
                    long_task = asyncio.create_task(
                        aclient.completions.create(model="", prompt="word " * 1500, max_tokens=4)
                    )
            assert long_task is not None
            long = await long_task
            return got, long.usage.prompt_tokens

        got, prompt_tokens = asyncio.run(main())
        assert prompt_tokens > 1400 and got >= 100
        steps = srv.metric("halo_engine_steps_total") - steps0
        # 120 decode steps for the runner; the long prompt needs >= 1400/128 ~ 11 chunks, which ran
        # interleaved with those decode steps rather than as one long blocking step.
        assert steps < 120 + 4 + 20
        assert client.completions.create(model="", prompt="Hi", max_tokens=2).usage.completion_tokens == 2


@pytest.mark.parametrize(
    "layout", [["--kv-unified"], ["--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--flash-attn", "on"]]
)
def test_other_kv_layouts_batch_and_agree(layout: list[str]) -> None:
    with RemoteServer(["--parallel", "4", "--ctx-size", "4096", "--threads", "2", *layout]) as srv:

        async def main() -> list[str]:
            client = srv.async_client()
            calls = [
                client.completions.create(model="", prompt="The sky is", max_tokens=12, temperature=0)
                for _ in range(4)
            ]
            return [r.choices[0].text for r in await asyncio.gather(*calls)]

        texts = asyncio.run(main())
        assert len(set(texts)) == 1 and texts[0]
        assert srv.metric("halo_engine_max_sequences_per_step") >= 2
