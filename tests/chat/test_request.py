"""Request planning: what the template, the grammar and the parsers get (pure, no model)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from haloserve.errors import InvalidRequestError
from haloserve.protocol.openai import ChatCompletionRequest
from haloserve.server.chat.request import closed_objects, plan_chat
from haloserve.server.convert import chat_messages

TOOL = {
    "type": "function",
    "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}},
}
QWEN_LIKE = "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}<tool_call><think>"
PLAIN = "{% for m in messages %}{{ m.content }}{% endfor %}"
HISTORY: list[Any] = [
    {"role": "user", "content": "1+2?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "3"},
]


def _plan(template: str, **body: Any) -> Any:
    req = ChatCompletionRequest.model_validate({"messages": HISTORY, **body})
    return plan_chat(req, chat_messages(req), template, reasoning_format=body.pop("_fmt", "auto"))


def test_native_template_gets_tools_and_argument_objects() -> None:
    plan = _plan(QWEN_LIKE, tools=[TOOL])
    assert plan.tools and plan.tools[0]["function"]["name"] == "add"
    assert plan.messages[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert plan.messages[2] == {"role": "tool", "content": "3", "tool_call_id": "call_1"}
    assert plan.tool_format is not None and plan.tool_format.name == "hermes"
    assert plan.grammar is None and plan.reasoning == "think"


def test_template_without_tools_gets_them_in_the_system_prompt() -> None:
    plan = _plan(PLAIN, tools=[TOOL], tool_choice="required")
    assert plan.tools is None
    system = plan.messages[0]
    assert system["role"] == "system" and json.dumps(TOOL) in system["content"]
    assert "<tool_call>" in plan.messages[2]["content"] and plan.messages[2]["role"] == "assistant"
    assert plan.messages[3] == {"role": "user", "content": "<tool_response>\n3\n</tool_response>"}
    assert plan.grammar is not None and '"const": "add"' in plan.grammar and plan.grammar_param == "tools"
    assert plan.reasoning == ""


def test_tool_choice_none_parses_nothing_and_reasoning_can_stay_inline() -> None:
    plan = _plan(QWEN_LIKE, tools=[TOOL], tool_choice="none", _fmt="none")
    assert plan.tool_format is None and plan.grammar is None and plan.reasoning == ""


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [TOOL, TOOL]}, "tools[1].function.name"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "function"}}, "tool_choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": []}}}, "response_format"),
    ],
)
def test_bad_requests_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        _plan(PLAIN, **body)
    assert info.value.param == param


def test_closed_objects_only_where_unsaid() -> None:
    schema = {
        "type": "object",
        "properties": {"inner": {"type": "object", "properties": {"x": {}}}, "free": {"type": "object"}},
        "additionalProperties": True,
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is True
    assert closed["properties"]["inner"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["free"]
