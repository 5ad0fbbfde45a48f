"""OpenAI API request models (pydantic), with the sampling extensions llama-server and vLLM accept.

Responses are built as plain dicts on the hot path (see ``server/``); these models validate input
and document the API in ``/openapi.json``. Unknown fields are ignored, as vLLM does, so clients that
send newer OpenAI parameters keep working.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

MAX_STOP_SEQUENCES = 16
# A lone UTF-16 surrogate: JSON lets a client send one ("\\ud800"), but it is not a character, cannot be
# encoded as UTF-8 and would fail deep inside the tokenizer, the template or the error response.
_SURROGATE = re.compile("[\ud800-\udfff]")
LONE_SURROGATE = "lone_surrogate"
TOO_DEEP = "too_deep"
# Deepest nesting of arrays and objects accepted in a request body. Real schemas and tool parameters
# nest a few levels (OpenAI allows 10 in strict schemas); the code that walks them (schema rewriting,
# templates, grammars) recurses, and Python's stack must never be what refuses a request.
MAX_NESTING = 64


def find_invalid_text(value: Any, path: str = "") -> tuple[str, str] | None:
    """``(kind, dotted path)`` of the first problem in a raw JSON value: a string (key or value) holding a
    lone surrogate (:data:`LONE_SURROGATE`), or nesting deeper than :data:`MAX_NESTING` (``TOO_DEEP``)."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:  # iterative: the walk itself must not exhaust the Python stack
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return LONE_SURROGATE, where or "body"
            continue
        if isinstance(item, (dict, list)) and depth >= MAX_NESTING:
            return TOO_DEEP, where or "body"
        if isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    return LONE_SURROGATE, where or "body"
                stack.append((sub, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, f"{where}.{i}" if where else str(i), depth + 1) for i, sub in enumerate(item))
    return None


_MESSAGES = {
    LONE_SURROGATE: "{param}: text must be valid Unicode (a lone UTF-16 surrogate is not a character)",
    TOO_DEEP: "{param}: nested deeper than " + str(MAX_NESTING) + " levels",
}


def invalid_text_message(kind: str, where: str) -> str:
    """The client-facing message for a :func:`find_invalid_text` finding."""
    return _MESSAGES[kind].format(param=where)


def check_text(value: Any) -> Any:
    """Refuse (a 400 naming the field) a raw request body with a lone surrogate or too deep nesting."""
    found = find_invalid_text(value)
    if found is not None:
        kind, where = found
        raise PydanticCustomError(kind, _MESSAGES[kind], {"param": where})
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StreamOptions(_Model):
    """``stream_options``: ``include_usage`` adds a final chunk with token counts."""

    include_usage: bool = False
    continuous_usage_stats: bool = False


class FunctionCall(_Model):
    """A function call inside an assistant message."""

    name: str
    arguments: str = ""


class ToolCall(_Model):
    """One entry of an assistant message's ``tool_calls``."""

    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Model):
    """A content part; only ``text`` parts are supported by the text-only engine."""

    type: str
    text: str | None = None


class ChatMessage(_Model):
    """One chat message as the OpenAI API defines it."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def text(self) -> str:
        """The message content as plain text (text parts joined); other part types are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                from haloserve.errors import InvalidRequestError

                raise InvalidRequestError(
                    f"content part type {part.type!r} is not supported: this server is text-only",
                    param="messages",
                )
            out.append(part.text)
        return "".join(out)


class SamplingFields(_Model):
    """Sampling and length controls shared by chat and completions requests."""

    model: str = Field("", description="Model id, as listed by /v1/models.")
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    seed: int | None = None
    user: str | None = None
    # Extensions accepted by llama-server and vLLM.
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = Field(None, alias="repetition_penalty")
    repeat_last_n: Annotated[int, Field(ge=-1)] | None = None
    ignore_eos: bool | None = False
    min_tokens: Annotated[int, Field(ge=0)] | None = 0

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        # Once per request body, before any field is parsed: every string of it, nested ones included.
        return check_text(data)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list):
            if len(v) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
            if any(s == "" for s in v):
                raise ValueError("stop sequences must not be empty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v:
            for key in v:
                try:
                    int(key)
                except ValueError:
                    raise ValueError(f"logit_bias keys must be token ids, got {key!r}") from None
        return v

    def stop_list(self) -> list[str]:
        """Stop sequences as a list (``stop`` may be a string or a list)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    suffix: str | None = None
    echo: bool | None = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
