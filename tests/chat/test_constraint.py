"""Grammar constraints against the bundled model's real vocabulary (no server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from haloserve.engine.chat_template import ChatTemplate
from haloserve.engine.grammar import build_constraint, lit, resolve_literals, single_token
from haloserve.engine.llamacpp import LlamaModel
from haloserve.errors import InvalidRequestError
from haloserve.protocol.openai import ChatCompletionRequest
from haloserve.server.chat.request import plan_chat, with_layout
from haloserve.server.convert import chat_messages

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model(model_path: Any) -> Iterator[LlamaModel]:
    m = LlamaModel(model_path)
    yield m
    m.close()


def _walk(c: Any, model: LlamaModel, limit: int = 64) -> str:
    """Greedy walk through the grammar with uniform logits: the text the mask lets through."""
    out = b""
    for _ in range(limit):
        c.compute_mask()
        logits = np.zeros(model.n_vocab, dtype=np.float32)
        c.apply(logits)
        allowed = np.flatnonzero(logits == 0)
        assert allowed.size, "the mask allows nothing"
        pieces = [model.piece(int(t), True) for t in allowed]
        tok = int(allowed[max(range(len(pieces)), key=lambda i: (bool(pieces[i].strip()), len(pieces[i])))])
        if tok in model.eog_tokens:
            break
        assert c.accept(tok)
        out += model.piece(tok, True)
        if c.done:
            break
    return out.decode()


def test_special_tokens_become_token_references(model: LlamaModel) -> None:
    start = single_token(model, "<|im_start|>")
    assert start is not None
    assert resolve_literals(f"start: {lit('<|im_start|>')} {lit('<tool_call>')}", model) == (
        f'start: <[{start}]> "<tool_call>"'
    )
    c = build_constraint(f'start: {lit("<|im_start|>")} "ok"', "test", model)
    c.compute_mask()
    logits = np.zeros(model.n_vocab, dtype=np.float32)
    c.apply(logits)
    assert np.flatnonzero(logits == 0).tolist() == [start]
    assert c.accept(start) and _walk(c, model) == "ok" and c.done


def test_schema_walk_is_valid_json(model: LlamaModel) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 3}, "ok": {"const": True}},
        "required": ["n", "ok"],
        "additionalProperties": False,
    }
    c = build_constraint(f"start: %json {json.dumps(with_layout(schema))}", "response_format", model)
    assert json.loads(_walk(c, model)) == {"n": 3, "ok": True}


def test_unenforceable_grammar_is_a_400(model: LlamaModel) -> None:
    with pytest.raises(InvalidRequestError) as info:
        build_constraint('start: %json {"type": "string", "format": "color"}', "response_format", model)
    assert info.value.param == "response_format" and "color" in info.value.message


QWEN25_LIKE = (  # the tool parts of Qwen2.5's chat template
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}"
    "{{- tool | tojson }}{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}"
    "{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' + tool_call.name + \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}{{- '<|im_start|>user\\n<tool_response>\\n' + message.content }}"
    "{{- '\\n</tool_response><|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_native_tool_template_renders_calls_and_results() -> None:
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    req = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": "1+2?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "3"},
            ],
            "tools": [tool],
        }
    )
    plan = plan_chat(req, chat_messages(req), QWEN25_LIKE)
    text = ChatTemplate(QWEN25_LIKE).render(plan.messages, tools=plan.tools)
    assert '<tools>\n{"type": "function", "function": {"name": "add"' in text
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>' in text  # not a JSON string
    assert "<tool_response>\n3\n</tool_response>" in text


def test_strict_tool_in_auto_mode_leaves_text_free_then_enforces_the_call(model: LlamaModel) -> None:
    a7 = {"a": {"type": "integer", "minimum": 7, "maximum": 7}}
    seven = {"type": "object", "properties": a7, "required": ["a"]}
    tool = {"type": "function", "function": {"name": "add", "strict": True, "parameters": seven}}
    req = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "7?"}], "tools": [tool]}
    )
    plan = plan_chat(req, chat_messages(req), "{{ tools }}<tool_call>")
    assert plan.grammar is not None and plan.tool_format is not None
    c = build_constraint(plan.grammar, "tools", model)
    for tok in model.tokenize("Sure, any text at all. <tool_call>", add_special=False):
        c.compute_mask()
        assert c.accept(tok)
    call, closed, _ = _walk(c, model).partition("</tool_call>")  # free text may follow the call
    assert closed and json.loads(call) == {"name": "add", "arguments": {"a": 7}}
