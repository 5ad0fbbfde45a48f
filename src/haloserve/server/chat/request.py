"""A chat request's tools, ``tool_choice``, ``response_format`` and reasoning, checked and turned into
what the template, the engine and the reply assembler need (:class:`ChatPlan`).

Where the OpenAI docs are silent we follow vLLM and llama-server: tools go to the model's own template;
``required`` and a named function are enforced with a grammar in the model's tool-call format; strict
JSON schemas are enforced with llguidance and a schema it cannot enforce is a 400 that names the problem.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from haloserve.engine.grammar import lit
from haloserve.errors import InvalidRequestError
from haloserve.protocol.openai import ChatCompletionRequest
from haloserve.server.chat.formats import FORMATS, Harmony, ToolFormat, detect_format

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

TOOLS_SYSTEM_PROMPT = (
    "You may call one or more functions to assist with the user query. The functions are described "
    "below as JSON schemas:\n<tools>\n{tools}\n</tools>\n\nTo call a function, reply with a JSON object "
    "holding the function name and its arguments, inside <tool_call></tool_call> tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


@dataclass
class ChatPlan:
    """What one chat request needs beyond plain text generation."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_format: ToolFormat | None = None  # parse tool calls from the output when set
    named: bool = False
    grammar: str | None = None
    grammar_param: str = ""
    reasoning: str = ""  # "think": a leading <think> block; "harmony": gpt-oss channels; "": none
    preserved: list[str] = field(default_factory=list)


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def check_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate OpenAI function tools (type, name, parameters schema) and return them normalised."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"{where}.type must be 'function'", f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _bad(f"{where}.function is required", f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _bad(
                f"{where}.function.name must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-' (got {name!r})",
                f"{where}.function.name",
            )
        if name in seen:
            raise _bad(f"{where}.function.name {name!r} is defined twice", f"{where}.function.name")
        seen.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise _bad(
                f"{where}.function.parameters must be a JSON schema of type 'object'",
                f"{where}.function.parameters",
            )
        fn = {**fn, "parameters": params}
        out.append({"type": "function", "function": fn})
    return out


def _choice(req: ChatCompletionRequest, tools: list[dict[str, Any]] | None) -> tuple[str, str | None]:
    """(mode, named function) from ``tool_choice``."""
    choice = req.tool_choice
    if choice is None:
        return ("auto" if tools else "none"), None
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _bad(
                f"tool_choice must be 'none', 'auto', 'required' or a function, got {choice!r}", "tool_choice"
            )
        if choice != "none" and not tools:
            raise _bad(f"tool_choice {choice!r} needs tools", "tool_choice")
        return choice, None
    fn = choice.get("function") if choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise _bad("tool_choice must be {'type': 'function', 'function': {'name': ...}}", "tool_choice")
    if not tools or all(t["function"]["name"] != name for t in tools):
        raise _bad(f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
    return "named", name


def calls_schema(tools: list[dict[str, Any]], only: str | None = None) -> dict[str, Any]:
    """JSON schema of one call ``{"name", "arguments"}`` to any of ``tools`` (or just to ``only``)."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                "arguments": closed_objects(t["function"]["parameters"]),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
        if only is None or t["function"]["name"] == only
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def closed_objects(schema: Any) -> Any:
    """A copy of ``schema`` where objects that list ``properties`` but say nothing about
    ``additionalProperties`` get ``false`` (llama.cpp's default for grammars; keeps calls to the point)."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in ("const", "enum", "default") else closed_objects(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def with_layout(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with llguidance's compact layout: one line, ``", "`` and ``": "`` separators. Free
    whitespace lets a weak model pad forever; one line costs nothing to clients that parse the JSON."""
    layout = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    return {**schema, "x-guidance": {**layout, **schema.get("x-guidance", {})}}


def response_format_schema(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema ``response_format`` asks for (None for plain text)."""
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = (fmt or {}).get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise _bad("response_format.json_schema must be an object with a 'schema'", "response_format")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise _bad("response_format.json_schema.schema must be a JSON schema object", "response_format")
        return schema
    raise _bad(
        f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
        "response_format",
    )


def _template_messages(req: ChatCompletionRequest, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool-call arguments as objects (what HF templates expect), content never None."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                fn = dict(tc["function"])
                with contextlib.suppress(ValueError):
                    fn["arguments"] = json.loads(fn.get("arguments") or "{}")
                calls.append({**tc, "function": fn})
            m["tool_calls"] = calls
        out.append(m)
    return out


def _inject_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates that ignore ``tools``: describe them (Hermes style) in the system message."""
    desc = TOOLS_SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    rendered = []
    for m in messages:
        if m.get("tool_calls"):
            calls = "\n".join(
                "<tool_call>\n"
                + json.dumps({"name": tc["function"]["name"], "arguments": tc["function"]["arguments"]})
                + "\n</tool_call>"
                for tc in m["tool_calls"]
            )
            m = {"role": "assistant", "content": ((m.get("content") or "") + "\n" + calls).strip()}
        elif m.get("role") == "tool":
            m = {"role": "user", "content": f"<tool_response>\n{m.get('content', '')}\n</tool_response>"}
        rendered.append(m)
    if rendered and rendered[0].get("role") == "system":
        return [{**rendered[0], "content": f"{rendered[0]['content']}\n\n{desc}"}, *rendered[1:]]
    return [{"role": "system", "content": desc}, *rendered]


def plan_chat(
    req: ChatCompletionRequest,
    messages: list[dict[str, Any]],
    template_source: str,
    *,
    tool_parser: str = "auto",
    reasoning_format: str = "auto",
) -> ChatPlan:
    """Check the request's tools / response_format and build its :class:`ChatPlan`."""
    tools = check_tools(req.tools) if req.tools else None
    mode, named = _choice(req, tools)
    plan = ChatPlan(messages=_template_messages(req, messages), tools=tools)
    knows_tools = "tools" in template_source
    fmt_name = detect_format(template_source) if tool_parser == "auto" else tool_parser
    if tools:
        if not knows_tools:
            plan.messages = _inject_tools(plan.messages, tools)
            plan.tools = None
            fmt_name = "hermes" if tool_parser == "auto" else fmt_name
        fmt = FORMATS[fmt_name]()
        if mode != "none":
            plan.tool_format = fmt
            plan.preserved.extend(fmt.markers)
        if mode in ("required", "named"):
            parallel = req.parallel_tool_calls is not False and mode == "required"
            plan.grammar = fmt.grammar(calls_schema(tools, named), parallel, lit)
            plan.grammar_param = "tools"
            plan.named = mode == "named"
        elif mode == "auto" and any(t["function"].get("strict") for t in tools):
            lazy = fmt.lazy_grammar(calls_schema(tools), lit)
            if lazy is not None and req.response_format is None:
                plan.grammar, plan.grammar_param = lazy, "tools"
    schema = response_format_schema(req.response_format)
    if schema is not None and plan.grammar is None:
        plan.grammar = "start: %json " + json.dumps(with_layout(schema), ensure_ascii=False) + "\n"
        plan.grammar_param = "response_format"
    if reasoning_format != "none" and "<|channel|>" in template_source:
        plan.reasoning = "harmony"
        plan.preserved.extend(m for m in (*Harmony.markers, "<|return|>") if m not in plan.preserved)
    elif reasoning_format != "none" and "<think>" in template_source:
        plan.reasoning = "think"
        plan.preserved.extend(("<think>", "</think>"))
    return plan
