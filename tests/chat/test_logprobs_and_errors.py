"""Logprobs in OpenAI's shapes (chat and completions, streamed and not) and 400s in OpenAI's shape."""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.model

HI: Any = [{"role": "user", "content": "Say hello."}]


def _check_entry(entry: Any, n_top: int) -> None:
    assert entry.logprob <= 0.0
    assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert len(entry.top_logprobs) == n_top
    values = [t.logprob for t in entry.top_logprobs]
    assert values == sorted(values, reverse=True)
    assert sum(math.exp(v) for v in values) <= 1.0 + 1e-4
    assert entry.logprob <= values[0] + 1e-5


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="", messages=HI, max_tokens=8, logprobs=True, top_logprobs=5, seed=1
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        _check_entry(entry, 5)
    greedy = client.chat.completions.create(
        model="", messages=HI, max_tokens=8, logprobs=True, top_logprobs=1, temperature=0
    )
    for entry in greedy.choices[0].logprobs.content or []:  # type: ignore[union-attr]
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the most likely token


def test_chat_logprobs_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="",
        messages=HI,
        max_tokens=8,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    entries: list[Any] = []
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        if chunk.choices and chunk.choices[0].logprobs is not None:
            entries.extend(chunk.choices[0].logprobs.content or [])
    assert usage is not None and len(entries) == usage.completion_tokens
    for entry in entries:
        _check_entry(entry, 2)


def test_completion_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(model="", prompt="The capital of France is", max_tokens=6, logprobs=3)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens  # type: ignore[union-attr]
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == r.choices[0].text  # an end-of-turn token shows as "", as in the text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(n)]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0 and token in top and 3 <= len(top) <= 4
    stream = client.completions.create(
        model="", prompt="Once upon", max_tokens=5, logprobs=0, stream=True, extra_body={"ignore_eos": True}
    )
    tokens = [t for c in stream if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens or []]
    assert len(tokens) == 5


def _bad_request(call: Any, param: str, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    err = info.value.body
    assert isinstance(err, dict) and err["param"] == param and words in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_errors_name_the_problem(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create
    unique: Any = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}},
    }
    _bad_request(
        lambda: chat(model="", messages=HI, response_format=unique), "response_format", "uniqueItems"
    )
    bad_ref: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}}
    _bad_request(lambda: chat(model="", messages=HI, response_format=bad_ref), "response_format", "nope")
    _bad_request(
        lambda: chat(model="", messages=HI, response_format={"type": "yaml"}),
        "response_format",
        "yaml",  # type: ignore[arg-type,misc]
    )
    bad_name: Any = [{"type": "function", "function": {"name": "no spaces allowed"}}]
    _bad_request(lambda: chat(model="", messages=HI, tools=bad_name), "tools[0].function.name", "no spaces")
    bad_params: Any = [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]
    _bad_request(
        lambda: chat(model="", messages=HI, tools=bad_params), "tools[0].function.parameters", "object"
    )
    tool: Any = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}]
    _bad_request(lambda: chat(model="", messages=HI, tools=tool, tool_choice="required"), "tools", "not")
    choice: Any = {"type": "function", "function": {"name": "g"}}
    _bad_request(lambda: chat(model="", messages=HI, tools=tool, tool_choice=choice), "tool_choice", "'g'")
    _bad_request(lambda: chat(model="", messages=HI, tool_choice="required"), "tool_choice", "needs tools")
    _bad_request(lambda: chat(model="", messages=HI, top_logprobs=3), "top_logprobs", "logprobs")
    _bad_request(lambda: chat(model="", messages=HI, logprobs=True, top_logprobs=21), "top_logprobs", "20")
