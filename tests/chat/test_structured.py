"""Structured output and forced tool calls with the bundled (weak) model: the grammar makes them valid."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.model

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["c", "f"]}},
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}]


def _many(client: openai.OpenAI, n: int, **kwargs: Any) -> list[Any]:
    """``n`` chat completions in parallel with seeds 0..n-1 (temperature 1 unless given)."""
    kwargs.setdefault("temperature", 1.0)
    with ThreadPoolExecutor(4) as pool:
        return list(
            pool.map(lambda seed: client.chat.completions.create(model="", seed=seed, **kwargs), range(n))
        )


def test_json_schema_strict_always_validates(client: openai.OpenAI) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    invent = [{"role": "user", "content": "Invent a person."}]
    for r in _many(client, 12, messages=invent, max_tokens=120, response_format=fmt):
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)


def test_json_object_always_parses(client: openai.OpenAI) -> None:
    cat = [{"role": "user", "content": "Describe a cat as JSON."}]
    finished = 0
    for r in _many(
        client, 6, messages=cat, temperature=0.7, max_tokens=150, response_format={"type": "json_object"}
    ):
        text = r.choices[0].message.content or ""
        assert text.startswith("{")
        if r.choices[0].finish_reason == "stop":  # "length" cuts the object short, as with OpenAI
            assert isinstance(json.loads(text), dict)
            finished += 1
    assert finished


def test_json_schema_streamed(client: openai.OpenAI) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    stream = client.chat.completions.create(
        model="",
        messages=[{"role": "user", "content": "A person please."}],
        seed=7,
        max_tokens=120,
        response_format=fmt,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def _check_calls(message: Any, only: str | None = None) -> None:
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert only is None or call.function.name == only
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_tool_choice_required_always_calls(client: openai.OpenAI) -> None:
    kwargs: Any = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}
    for r in _many(client, 4, messages=ASK, max_tokens=160, **kwargs):
        assert r.choices[0].finish_reason == "tool_calls"
        assert len(r.choices[0].message.tool_calls or []) == 1
        _check_calls(r.choices[0].message)


def test_named_tool_choice_always_calls_that_function(client: openai.OpenAI) -> None:
    choice: Any = {"type": "function", "function": {"name": "add"}}
    for r in _many(client, 8, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=80):
        assert r.choices[0].finish_reason == "stop"  # OpenAI: a forced named function ends with "stop"
        _check_calls(r.choices[0].message, "add")


def test_streamed_tool_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        seed=1,
        max_tokens=160,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for tc in chunk.choices[0].delta.tool_calls or []:
            if tc.id is not None:  # the first delta of a call names it
                assert tc.index not in calls and tc.type == "function" and tc.function is not None
                calls[tc.index] = {"name": tc.function.name or "", "arguments": tc.function.arguments or ""}
            else:
                assert tc.function is not None and tc.function.name is None
                calls[tc.index]["arguments"] += tc.function.arguments or ""
    assert finish == "tool_calls" and sorted(calls) == list(range(len(calls))) and calls
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_tool_results_go_back_into_the_template(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}},
        seed=2,
        max_tokens=60,
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages: Any = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "5"},
    ]
    r = client.chat.completions.create(
        model="", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=20
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")


def test_mixed_batch_of_constrained_and_free_requests(client: openai.OpenAI) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}

    def one(i: int) -> tuple[int, Any]:
        kwargs: Any = {"response_format": fmt} if i % 2 else {}
        return i, client.chat.completions.create(
            model="",
            messages=[{"role": "user", "content": "Tell me about a person."}],
            seed=i,
            max_tokens=100,
            **kwargs,
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, r in results:
        assert r.choices[0].finish_reason in ("stop", "length")
        if i % 2:
            jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)
        else:
            assert r.choices[0].message.content


def test_reasoning_content_and_enable_thinking(client: openai.OpenAI) -> None:
    msgs: Any = [{"role": "user", "content": "Hi!"}]
    thinking = client.chat.completions.create(
        model="", messages=msgs, max_tokens=12, extra_body={"chat_template_kwargs": {"enable_thinking": True}}
    )
    msg: Any = thinking.choices[0].message
    assert msg.reasoning_content  # the prompt opened <think>; this small model never closes it
    plain = client.chat.completions.create(model="", messages=msgs, max_tokens=12)
    assert (
        plain.choices[0].message.content
        and getattr(plain.choices[0].message, "reasoning_content", None) is None
    )
    stream = client.chat.completions.create(
        model="",
        messages=msgs,
        max_tokens=12,
        stream=True,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    deltas = [c.choices[0].delta for c in stream if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)


def test_openai_parse_helper_with_pydantic(client: openai.OpenAI) -> None:
    from enum import Enum

    from pydantic import BaseModel, Field

    class Color(str, Enum):
        red = "red"
        blue = "blue"

    class Pet(BaseModel):
        name: str = Field(max_length=20)
        legs: int = Field(ge=0, le=8)

    class Owner(BaseModel):
        name: str = Field(max_length=20)
        favourite: Color
        pets: list[Pet] = Field(max_length=2)
        nickname: str | None = Field(max_length=12)

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(
        model="",
        messages=[{"role": "user", "content": "An owner with a pet."}],
        response_format=Owner,
        max_tokens=150,
        seed=4,
    )
    assert isinstance(r.choices[0].message.parsed, Owner)


def test_auto_mode_with_a_strict_tool_answers_or_calls_validly(client: openai.OpenAI) -> None:
    for r in _many(client, 4, messages=ASK, tools=TOOLS, max_tokens=60):
        choice = r.choices[0]
        assert choice.finish_reason in ("stop", "length", "tool_calls")
        if choice.message.tool_calls:
            _check_calls(choice.message)
        else:
            assert choice.message.content
