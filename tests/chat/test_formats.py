"""Tool-call and reasoning parsing from recorded model outputs, whole and streamed in odd chunks."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haloserve.engine.base import Output
from haloserve.server.chat.assemble import ChatAssembler, expand
from haloserve.server.chat.formats import FORMATS, Call, detect_format
from haloserve.server.chat.stream import Event, HarmonySplitter, ReasoningSplitter, ToolCallStream

WEATHER = Call("get_weather", '{"city": "Paris"}')
ADD = Call("add", '{"a": 1, "b": 2}')

# (format, recorded output, expected content, expected calls)
RECORDED = [
    (
        "hermes",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
        "Let me check.\n",
        [WEATHER, ADD],
    ),
    ("hermes", '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', "", [ADD]),  # unclosed at EOS
    (
        "hermes",
        "No tools needed: 2 < 3 and <tool is not a tag.",
        "No tools needed: 2 < 3 and <tool is not a tag.",
        [],
    ),
    (
        "hermes",  # Qwen3-Coder
        "I'll add them.\n<tool_call>\n<function=add>\n<parameter=a>\n1\n</parameter>\n<parameter=b>\n2\n"
        "</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\n"
        "Paris\n</parameter>\n</function>\n</tool_call>",
        "I'll add them.\n",
        [ADD, WEATHER],
    ),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [WEATHER]),
    (
        "llama3_json",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "add", "parameters": {"a": 1, "b": 2}}',
        "",
        [WEATHER, ADD],
    ),
    ("llama3_json", "Paris is sunny {not json}", "Paris is sunny {not json}", []),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "add", "arguments": {"a": 1, "b": 2}}]',
        "",
        [WEATHER, ADD],
    ),
    (
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}',
        "",
        [WEATHER, ADD],
    ),
    (
        "harmony",
        "<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "Paris"}<|call|>',
        "",
        [WEATHER],
    ),
]


def _run(fmt: str, chunks: list[str]) -> tuple[str, list[Call]]:
    stream = ToolCallStream(FORMATS[fmt]())
    events: list[Event] = []
    for chunk in chunks:
        events.extend(stream.feed(chunk))
    events.extend(stream.finish())
    content = "".join(e.text for e in events if e.kind == "content")
    calls: list[Call] = []
    for e in events:  # streamed calls: a call_start then argument fragments
        if e.kind == "args":
            calls[-1] = Call(calls[-1].name, calls[-1].arguments + e.text)
        elif e.call is not None:
            calls.append(e.call)
    return content, calls


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), RECORDED)
def test_whole_output(fmt: str, text: str, content: str, calls: list[Call]) -> None:
    assert _run(fmt, [text]) == (content, calls)


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), RECORDED)
@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30))
@pytest.mark.slow
def test_streamed_in_odd_chunks(
    fmt: str, text: str, content: str, calls: list[Call], cuts: list[int]
) -> None:
    assert _run(fmt, _split(text, cuts)) == (content, calls)


def test_one_character_at_a_time_never_leaks_marker_text() -> None:
    text = RECORDED[0][1]
    stream = ToolCallStream(FORMATS["hermes"]())
    released = "".join(e.text for ch in text for e in stream.feed(ch) if e.kind == "content")
    assert "<" not in released
    assert released == "Let me check.\n"


@pytest.mark.parametrize(
    ("template", "fmt"),
    [
        ("{{ '<tool_call>' }} {% if tools %}{% endif %}", "hermes"),
        ("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", "mistral"),
        ("<|start_header_id|>ipython<|end_header_id|> parameters <|python_tag|>", "llama3_json"),
        ("<|start|>assistant<|channel|>final<|message|>", "harmony"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "hermes"),
    ],
)
def test_format_detected_from_template(template: str, fmt: str) -> None:
    assert detect_format(template) == fmt


REASONING = "<think>\nThe user greets me.\n</think>\n\nHello there!"


@settings(max_examples=80, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=20))
def test_reasoning_split_any_chunks(cuts: list[int]) -> None:
    splitter = ReasoningSplitter()
    events: list[Event] = []
    chunks = _split(REASONING, cuts)
    for i, chunk in enumerate(chunks):
        events.extend(splitter.feed(chunk, final=i == len(chunks) - 1))
    assert "".join(e.text for e in events if e.kind == "reasoning") == "\nThe user greets me.\n"
    assert "".join(e.text for e in events if e.kind == "content") == "Hello there!"


def test_reasoning_opened_by_the_prompt_and_absent() -> None:
    opened = ReasoningSplitter(opened=True)
    events = opened.feed("thinking...</think>answer", final=True)
    assert [(e.kind, e.text) for e in events] == [("reasoning", "thinking..."), ("content", "answer")]
    plain = ReasoningSplitter()
    assert [(e.kind, e.text) for e in plain.feed("<thin", final=False)] == []
    assert [(e.kind, e.text) for e in plain.feed("king about it", final=True)] == [
        ("content", "<thinking about it")
    ]


def test_assembler_streams_tool_calls_the_openai_way() -> None:
    asm = ChatAssembler(reasoning=ReasoningSplitter(), tools=ToolCallStream(FORMATS["hermes"]()))
    text = (
        '<think>weather?</think>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
        "\n</tool_call>"
    )
    parts = []
    for i in range(0, len(text), 7):
        final = i + 7 >= len(text)
        for delta in asm.feed(Output(text=text[i : i + 7]), final):
            parts.extend(d for d, _ in expand(delta))
    calls = [p["tool_calls"][0] for p in parts if "tool_calls" in p]
    assert calls[0]["index"] == 0 and calls[0]["type"] == "function"
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(c) == {"index", "function"} and c["index"] == 0 for c in calls[1:])
    arguments = "".join(c["function"]["arguments"] for c in calls[1:])
    assert len(calls) > 2 and json.loads(arguments) == {"city": "Paris"}  # fragments as they are written
    assert "".join(p.get("reasoning_content", "") for p in parts) == "weather?"
    assert asm.finish_reason("stop") == "tool_calls"
    msg = asm.message()
    assert msg["content"] is None and msg["refusal"] is None and msg["reasoning_content"] == "weather?"
    assert msg["tool_calls"][0]["id"] == calls[0]["id"]


GPT_OSS = [
    (
        "<|channel|>analysis<|message|>User wants the weather. Use the tool.<|end|><|start|>assistant"
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}',
        "User wants the weather. Use the tool.",
        "",
        [WEATHER],
    ),
    (
        "<|channel|>analysis<|message|>Simple greeting.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello!",
        "Simple greeting.",
        "Hello!",
        [],
    ),
    (
        '<|start|>assistant to=functions.add<|channel|>commentary json<|message|>{"a": 1, "b": 2}<|call|>',
        "",
        "",
        [ADD],
    ),
]


@pytest.mark.parametrize(("text", "reasoning", "content", "calls"), GPT_OSS)
@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=25))
def test_harmony_channels_and_calls(
    text: str, reasoning: str, content: str, calls: list[Call], cuts: list[int]
) -> None:
    asm = ChatAssembler(reasoning=HarmonySplitter(), tools=ToolCallStream(FORMATS["harmony"]()))
    chunks = _split(text, cuts)
    for i, chunk in enumerate(chunks):
        asm.feed(Output(text=chunk), final=i == len(chunks) - 1)
    msg = asm.message()
    assert msg.get("reasoning_content", "") == reasoning
    assert (msg["content"] or "") == content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in msg.get("tool_calls", [])] == [
        (c.name, c.arguments) for c in calls
    ]


def test_arguments_stream_while_the_call_is_written() -> None:
    stream = ToolCallStream(FORMATS["hermes"]())
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": "}"}}\n</tool_call>'
    kinds = [(e.kind, e.text) for i in range(0, len(text), 4) for e in stream.feed(text[i : i + 4])]
    kinds += [(e.kind, e.text) for e in stream.finish()]
    assert kinds[0] == ("call_start", "")
    fragments = [t for k, t in kinds if k == "args"]
    assert len(fragments) > 3 and "".join(fragments) == '{"a": 1, "b": "}"}'
    assert all(k in ("call_start", "args") for k, _ in kinds)
