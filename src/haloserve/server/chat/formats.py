"""Tool-call output formats: where a call starts, how complete calls are parsed, and the grammar
that forces a call (for ``tool_choice`` ``required`` or a named function).

Each format parses the text from its start marker on and returns the calls that are complete so far,
so the same code serves whole responses and streams cut at any byte. Formats:

- ``hermes`` (Hermes, Qwen 2.5/3, many fine-tunes):
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, or Qwen3-Coder's
  ``<tool_call><function=NAME><parameter=P>value</parameter></function></tool_call>``
- ``llama3_json`` (Llama 3.1-3.3): a JSON object ``{"name": ..., "parameters": {...}}``, optionally after
  ``<|python_tag|>``, several separated by ``;``
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` or ``[TOOL_CALLS]name[ARGS]{...}``
- ``harmony`` (gpt-oss): ``<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>``
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_decoder = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Call:
    """One parsed call: the function name and its arguments as a JSON string."""

    name: str
    arguments: str


def _args_json(value: Any) -> str:
    if isinstance(value, str):  # some models emit the arguments as a JSON string already
        try:
            value = json.loads(value)
        except ValueError:
            return json.dumps(value, ensure_ascii=False)
    return json.dumps({} if value is None else value, ensure_ascii=False)


def _call_from(obj: Any, args_keys: tuple[str, ...] = ("arguments", "parameters")) -> Call | None:
    if not isinstance(obj, dict):
        return None
    inner = obj.get("function")
    fn: dict[str, Any] = inner if isinstance(inner, dict) else obj
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        return None
    args: Any = next((fn[k] for k in args_keys if k in fn), {})
    return Call(name, _args_json(args))


def _decode_at(text: str, pos: int) -> tuple[Any, int] | None:
    """The JSON value starting at ``pos`` (after whitespace) and the offset past it; None if incomplete."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    try:
        return _decoder.raw_decode(text, pos)
    except ValueError:
        return None


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class ToolFormat:
    """Base class; subclasses set ``name`` and ``marker`` and implement :meth:`parse`."""

    name = ""
    marker = ""
    markers: tuple[str, ...] = ()  # extra texts that must be rendered (special tokens)

    def start(self, text: str) -> int:
        """Index where tool-call output begins in ``text`` (-1 if not yet)."""
        return text.find(self.marker)

    def hold(self, text: str) -> int:
        """How many trailing characters could still become the start marker (not released yet)."""
        return partial_suffix(text, self.marker)

    def parse(self, region: str, final: bool) -> list[Call]:
        """Complete calls in ``region`` (text from the start marker on); ``final`` at end of output."""
        raise NotImplementedError

    def grammar(self, calls_schema: dict[str, Any], parallel: bool, lit: Callable[[str], str]) -> str:
        """A Lark grammar (llguidance dialect) that forces at least one call matching ``calls_schema``."""
        raise NotImplementedError

    def lazy_grammar(self, calls_schema: dict[str, Any], lit: Callable[[str], str]) -> str | None:
        """A grammar leaving text free until a call starts, then enforcing it (``strict`` tools in
        ``auto`` mode); None when the format has none."""
        return None

    def open_call(self, region: str) -> tuple[str, str] | None:
        """Name and raw argument text so far of a call still being written, if the format can tell
        (then its arguments stream as they come); None otherwise."""
        return None


def json_value_prefix(raw: str) -> tuple[str, bool] | None:
    """The part of ``raw`` that belongs to the JSON object or array it starts with, and whether that
    value is complete; None if ``raw`` does not start with ``{`` or ``[``."""
    text = raw.lstrip()
    if not text or text[0] not in "{[":
        return None
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[: i + 1], True
    return text, False


def _json_rule(schema: dict[str, Any]) -> str:
    layout = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    return "%json " + json.dumps({**schema, "x-guidance": layout}, ensure_ascii=False)


_XML_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.DOTALL)
_XML_PARAM = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.DOTALL)


def _xml_call(body: str) -> Call | None:
    """Qwen3-Coder's ``<function=NAME><parameter=P>value</parameter></function>`` body."""
    m = _XML_FUNCTION.search(body)
    if m is None:
        return None
    args: dict[str, Any] = {}
    for p in _XML_PARAM.finditer(m.group(2)):
        value = p.group(2)
        try:  # numbers, booleans, objects and arrays are written as JSON; anything else is a string
            parsed = json.loads(value)
            args[p.group(1)] = value if isinstance(parsed, str) else parsed
        except ValueError:
            args[p.group(1)] = value
    return Call(m.group(1), json.dumps(args, ensure_ascii=False))


_HERMES_HEAD = re.compile(r'<tool_call>\s*\{\s*"name"\s*:\s*"([^"\\]+)"\s*,\s*"arguments"\s*:\s*')


def _hermes_call(block: str, inner: str) -> Call | None:
    """A call from a ``<tool_call>`` block; the arguments keep the model's own text when it wrote the
    usual ``{"name": ..., "arguments": {...}}`` (so streamed fragments add up to exactly them)."""
    m = _HERMES_HEAD.match(block)
    if m:
        got = json_value_prefix(block[m.end() :])
        if got is not None and got[1]:
            try:
                if isinstance(json.loads(got[0]), dict):
                    return Call(m.group(1), got[0])
            except ValueError:
                pass
    decoded = _decode_at(inner, 0)
    return _call_from(decoded[0]) if decoded else _xml_call(inner)


class Hermes(ToolFormat):
    """``<tool_call>{json}</tool_call>``, one block per call (or Qwen3-Coder's XML body in the block)."""

    name = "hermes"
    marker = "<tool_call>"
    markers = ("<tool_call>", "</tool_call>")
    _block = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def parse(self, region: str, final: bool) -> list[Call]:
        """Closed blocks, plus on the final text an unclosed last one that holds complete JSON."""
        calls: list[Call] = []
        end = 0
        for m in self._block.finditer(region):
            call = _hermes_call(m.group(0), m.group(1))
            if call:
                calls.append(call)
            end = m.end()
        if final:
            rest = region[end:]
            idx = rest.find(self.marker)
            if idx >= 0 and _decode_at(rest, idx + len(self.marker)) is not None:
                call = _hermes_call(rest[idx:], rest[idx + len(self.marker) :])
                if call:
                    calls.append(call)
        return calls

    def open_call(self, region: str) -> tuple[str, str] | None:
        """The last ``<tool_call>`` block while it is open and starts ``{"name": ..., "arguments": ``."""
        start = region.rfind(self.marker)
        if start < 0 or "</tool_call>" in region[start:]:
            return None
        m = _HERMES_HEAD.match(region, start)
        return (m.group(1), region[m.end() :]) if m else None

    def grammar(self, calls_schema: dict[str, Any], parallel: bool, lit: Callable[[str], str]) -> str:
        """``<tool_call>\\n{json}\\n</tool_call>`` once, or repeated when parallel calls are allowed."""
        rep = ' ("\\n" call)*' if parallel else ""
        return (
            f"start: call{rep}\n"
            f'call: {lit("<tool_call>")} "\\n" body "\\n" {lit("</tool_call>")}\n'
            f"body: {_json_rule(calls_schema)}\n"
        )

    def lazy_grammar(self, calls_schema: dict[str, Any], lit: Callable[[str], str]) -> str | None:
        """Free text; from ``<tool_call>`` on (a lazy trigger), a valid call and ``</tool_call>``."""
        return (
            "%llguidance {}\n"
            "start: call* TEXT\n"
            "TEXT: /(.|\\n)*/\n"
            'trigger[lazy]: TEXT "<tool_call>"\n'
            f'call: trigger /[ \\n]*/ {_json_rule(calls_schema)} /[ \\n]*/ "</tool_call>"\n'
        )


class Llama3Json(ToolFormat):
    """A bare JSON object (or ``<|python_tag|>`` then objects separated by ``;``)."""

    name = "llama3_json"
    marker = "<|python_tag|>"
    markers = ("<|python_tag|>",)

    def start(self, text: str) -> int:
        """At ``<|python_tag|>``, or at the very start when the reply opens with ``{``."""
        stripped = text.lstrip()
        if stripped.startswith("{"):
            return len(text) - len(stripped)
        return text.find(self.marker)

    def hold(self, text: str) -> int:
        """Hold everything while the reply is only whitespace (it may still open with ``{``)."""
        if not text.strip():
            return len(text)
        return super().hold(text)

    def parse(self, region: str, final: bool) -> list[Call]:
        """Every complete object, separated by ``;`` or whitespace."""
        pos = len(self.marker) if region.startswith(self.marker) else 0
        calls: list[Call] = []
        while True:
            got = _decode_at(region, pos)
            if got is None:
                return calls
            call = _call_from(got[0], ("parameters", "arguments"))
            if call is None:
                return calls
            calls.append(call)
            pos = got[1]
            while pos < len(region) and (region[pos].isspace() or region[pos] == ";"):
                pos += 1

    def grammar(self, calls_schema: dict[str, Any], parallel: bool, lit: Callable[[str], str]) -> str:
        """One JSON object (Llama 3 makes one call per turn)."""
        return f"start: {_json_rule(calls_schema)}\n"


class Mistral(ToolFormat):
    """``[TOOL_CALLS]`` then a JSON array, or (v11+ templates) ``name[ARGS]{json}`` per call."""

    name = "mistral"
    marker = "[TOOL_CALLS]"
    markers = ("[TOOL_CALLS]", "[ARGS]")

    def parse(self, region: str, final: bool) -> list[Call]:
        """The array's calls once it is complete, or each ``name[ARGS]{...}`` call."""
        calls: list[Call] = []
        for part in region.split(self.marker)[1:]:
            body = part.lstrip()
            if body.startswith("["):
                got = _decode_at(body, 0)
                if got is None:
                    return calls
                items = got[0] if isinstance(got[0], list) else []
                calls.extend(c for c in (_call_from(i) for i in items) if c)
            elif "[ARGS]" in body:
                name, _, args = body.partition("[ARGS]")
                got = _decode_at(args, 0)
                if got is None or not name.strip():
                    return calls
                calls.append(Call(name.strip(), _args_json(got[0])))
        return calls

    def grammar(self, calls_schema: dict[str, Any], parallel: bool, lit: Callable[[str], str]) -> str:
        """``[TOOL_CALLS]`` then an array of one call (or more when parallel calls are allowed)."""
        array: dict[str, Any] = {"type": "array", "items": calls_schema, "minItems": 1}
        if not parallel:
            array["maxItems"] = 1
        return f"start: {lit('[TOOL_CALLS]')} {_json_rule(array)}\n"


class Harmony(ToolFormat):
    """gpt-oss: a message addressed ``to=functions.NAME`` (in its role or channel part) whose body is the
    JSON arguments."""

    name = "harmony"
    marker = "to=functions."
    markers = ("<|channel|>", "<|message|>", "<|constrain|>", "<|call|>", "<|start|>", "<|end|>")
    _call = re.compile(
        r"to=functions\.([\w.-]+)(?:(?!<\|message\|>).)*<\|message\|>(.*?)(?:<\|call\|>|<\|end\|>|$)",
        re.DOTALL,
    )

    def start(self, text: str) -> int:
        """At the header (``<|channel|>`` or ``<|start|>``) that holds ``to=functions.``."""
        idx = text.find(self.marker)
        if idx < 0:
            return -1
        head = max(text.rfind("<|channel|>", 0, idx), text.rfind("<|start|>", 0, idx))
        return head if head >= 0 else idx

    def hold(self, text: str) -> int:
        """A header still open (no ``<|message|>`` yet) may turn out to address a function: hold it."""
        head = max(text.rfind("<|channel|>"), text.rfind("<|start|>"))
        if head >= 0 and "<|message|>" not in text[head:]:
            return len(text) - head
        return max(partial_suffix(text, m) for m in ("<|channel|>", "<|start|>", self.marker))

    def parse(self, region: str, final: bool) -> list[Call]:
        """Every call message whose JSON body is complete."""
        calls: list[Call] = []
        for m in self._call.finditer(region):
            got = _decode_at(m.group(2), 0)
            if got is not None:
                calls.append(Call(m.group(1), _args_json(got[0])))
        return calls

    def grammar(self, calls_schema: dict[str, Any], parallel: bool, lit: Callable[[str], str]) -> str:
        """``<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{args}`` per tool."""
        alts = []
        for option in calls_schema.get("anyOf", [calls_schema]):
            name = option["properties"]["name"]["const"]
            args = option["properties"]["arguments"]
            alts.append(
                f'{lit("<|channel|>")} "commentary to=functions.{name} " {lit("<|constrain|>")} "json" '
                f"{lit('<|message|>')} {_json_rule(args)}"
            )
        return "start: " + " | ".join(f"({a})" for a in alts) + "\n"


FORMATS: dict[str, type[ToolFormat]] = {f.name: f for f in (Hermes, Llama3Json, Mistral, Harmony)}


def detect_format(template: str) -> str:
    """The tool-call format a chat template implies (``hermes`` when it says nothing)."""
    if "<|channel|>" in template:
        return "harmony"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or ("ipython" in template and "parameters" in template):
        return "llama3_json"
    return "hermes"
