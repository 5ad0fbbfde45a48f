"""Chat templates: the model's own Jinja template rendered in a sandbox, as Hugging Face does.

The environment matches ``transformers``' chat-template environment (``trim_blocks``, ``lstrip_blocks``,
the ``loopcontrols`` extension, a ``tojson`` filter that keeps non-ASCII text, ``raise_exception`` and
``strftime_now``) so templates written for it render the same here. The sandbox stops templates from
reaching Python internals; a template that raises (for example "roles must alternate") becomes a 400.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from haloserve.errors import ConfigError, InvalidRequestError

# Used when a GGUF carries no template (llama-server falls back to ChatML as well).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TemplateRaised(Exception):
    """``raise_exception`` was called by the template."""


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(
    value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False
) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
        undefined=jinja2.Undefined,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template plus the special-token texts it may reference."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"chat template does not compile: {exc.message} (line {exc.lineno})") from None
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """The prompt text for ``messages``; template errors become a 400."""
        context: dict[str, Any] = dict(extra or {})
        context.update(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
        if tools:
            context["tools"] = tools
        try:
            return self._template.render(**context)
        except TemplateRaised as exc:
            raise InvalidRequestError(
                f"chat template rejected the messages: {exc}", param="messages"
            ) from None
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"chat template failed: {exc}", param="messages") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise InvalidRequestError(
                f"chat template failed on these messages: {type(exc).__name__}: {exc}", param="messages"
            ) from None
