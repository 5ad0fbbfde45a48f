"""Chat and completions through the official openai client: shapes, streaming, usage, stop, seeds."""

from __future__ import annotations

import pytest

from haloserve.testing.remote import RemoteServer

pytestmark = pytest.mark.model
MSG = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_models_lists_the_served_model(client) -> None:  # type: ignore[no-untyped-def]
    models = client.models.list().data
    assert [m.id for m in models] == ["smollm2-135m-instruct"]
    assert client.models.retrieve("smollm2-135m-instruct").id == "smollm2-135m-instruct"


def test_chat_non_streaming_shape_and_usage(client) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=MSG, max_tokens=20, temperature=0
    )
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 20 and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 20


def test_chat_stream_matches_non_stream_and_reports_usage(client) -> None:  # type: ignore[no-untyped-def]
    kw = {"model": "", "messages": MSG, "max_tokens": 24, "temperature": 0}
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.prompt_tokens == full.usage.prompt_tokens


def test_stream_without_include_usage_has_no_usage_chunk(client) -> None:  # type: ignore[no-untyped-def]
    chunks = list(client.chat.completions.create(model="", messages=MSG, max_tokens=5, stream=True))
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_completions_stream_and_echo(client) -> None:  # type: ignore[no-untyped-def]
    kw = {
        "model": "smollm2-135m-instruct",
        "prompt": "The capital of France is",
        "max_tokens": 12,
        "temperature": 0,
    }
    full = client.completions.create(**kw)
    assert full.object == "text_completion" and full.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    assert streamed == full.choices[0].text
    echoed = client.completions.create(echo=True, **kw)
    assert echoed.choices[0].text == kw["prompt"] + full.choices[0].text


def test_completions_accepts_token_ids(client) -> None:  # type: ignore[no-untyped-def]
    r = client.completions.create(model="", prompt=[504, 3575, 282], max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 3


def test_default_max_tokens_of_completions_is_16(client) -> None:  # type: ignore[no-untyped-def]
    r = client.completions.create(
        model="", prompt="List of numbers: 1, 2, 3,", temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_across_tokens_is_cut_and_never_sent(client, stream: bool) -> None:  # type: ignore[no-untyped-def]
    kw = {"model": "", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 30, "temperature": 0}
    base = client.completions.create(**kw).choices[0].text
    assert len(base) > 12
    stop = base[5:9]  # a stop string that starts mid-output and likely spans token boundaries
    expected = base[: base.index(stop)]
    if stream:
        chunks = list(client.completions.create(stop=[stop, "zzzz"], stream=True, **kw))
        text = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        r = client.completions.create(stop=[stop, "zzzz"], **kw)
        text, finish = r.choices[0].text, r.choices[0].finish_reason
    assert text == expected and stop not in text
    assert finish == "stop"


def test_seeded_sampling_is_reproducible(client) -> None:  # type: ignore[no-untyped-def]
    kw = {"model": "", "messages": MSG, "max_tokens": 24, "temperature": 1.0, "top_p": 1.0}
    a = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    assert a == b
    others = {client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1, "different seeds should not all give the same text"


def test_greedy_is_reproducible(client) -> None:  # type: ignore[no-untyped-def]
    kw = {"model": "", "messages": MSG, "max_tokens": 24, "temperature": 0}
    outs = {client.chat.completions.create(**kw).choices[0].message.content for _ in range(3)}
    assert len(outs) == 1


def test_ignore_eos_and_min_tokens(client) -> None:  # type: ignore[no-untyped-def]
    hi = [{"role": "user", "content": "Say OK."}]
    r = client.chat.completions.create(
        model="", messages=hi, max_tokens=60, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 60 and r.choices[0].finish_reason == "length"
    natural = client.chat.completions.create(model="", messages=hi, max_tokens=60, temperature=0)
    if natural.choices[0].finish_reason == "stop":
        n = natural.usage.completion_tokens + 5
        r = client.chat.completions.create(
            model="", messages=hi, max_tokens=60, temperature=0, extra_body={"min_tokens": n}
        )
        assert r.usage.completion_tokens >= n


def test_logit_bias_bans_and_forces_tokens(server: RemoteServer) -> None:
    import httpx

    client = server.client()
    kw = {"model": "", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    token = httpx.post(server.url + "/tokenize", json={"content": " banana"}).json()["tokens"][0]
    piece = httpx.post(server.url + "/detokenize", json={"tokens": [token]}).json()["content"]
    forced = client.completions.create(logit_bias={str(token): 100}, **kw)
    assert forced.choices[0].text == piece * 4
    greedy = client.completions.create(**{**kw, "max_tokens": 1}).choices[0].text
    first = httpx.post(server.url + "/tokenize", json={"content": greedy}).json()["tokens"][0]
    banned = (
        client.completions.create(logit_bias={str(first): -100}, **{**kw, "max_tokens": 1}).choices[0].text
    )
    assert banned != greedy


@pytest.mark.parametrize(
    "penalty",
    [{"presence_penalty": 2.0}, {"frequency_penalty": 2.0}, {"extra_body": {"repeat_penalty": 2.0}}],
)
def test_penalties_change_greedy_output(client, penalty: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    kw = {"model": "", "prompt": "dog dog dog dog dog dog dog dog", "max_tokens": 24, "temperature": 0}
    plain = client.completions.create(**kw).choices[0].text
    penalised = client.completions.create(**kw, **penalty).choices[0].text
    assert penalised != plain


def test_prefix_cache_reuses_a_conversation(server: RemoteServer) -> None:
    client = server.client()
    system = {"role": "system", "content": "You are a terse assistant. " * 20}
    turn1 = [system, {"role": "user", "content": "Name a colour."}]
    r1 = client.chat.completions.create(model="", messages=turn1, max_tokens=8, temperature=0)
    turn2 = [
        *turn1,
        {"role": "assistant", "content": r1.choices[0].message.content},
        {"role": "user", "content": "Another."},
    ]
    r2 = client.chat.completions.create(model="", messages=turn2, max_tokens=8, temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens - 1, (cached, r1.usage.prompt_tokens)
    assert cached < r2.usage.prompt_tokens


def test_interleaved_conversations_keep_their_caches(server: RemoteServer) -> None:
    # Two users taking turns: the second must not overwrite the first one's cached conversation
    # (a node keeps as many conversations as it has slots; the least recently used goes first).
    client = server.client()
    history = {
        name: [{"role": "system", "content": f"You are assistant {name}. " + "Keep answers short. " * 15}]
        for name in ("a", "b")
    }
    prompt_tokens: dict[str, int] = {}
    for turn in range(2):
        for name, msgs in history.items():
            msgs.append({"role": "user", "content": f"Question {turn} for {name}."})
            r = client.chat.completions.create(model="", messages=msgs, max_tokens=6, temperature=0)
            msgs.append({"role": "assistant", "content": r.choices[0].message.content})
            if turn == 1:
                cached = r.usage.prompt_tokens_details.cached_tokens
                assert cached >= prompt_tokens[name] - 1, (name, cached, prompt_tokens[name])
            prompt_tokens[name] = r.usage.prompt_tokens
