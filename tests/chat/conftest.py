"""One shared `halo serve` for the tools tests: the bundled model with a Qwen3-style thinking template."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from haloserve.testing.remote import RemoteServer

# ChatML (as SmolLM2's own template) plus Qwen3's switch: enable_thinking opens a <think> block in the
# generation prompt, otherwise an empty one is closed there. It says nothing about tools, so tools are
# described in the system prompt and called in the Hermes format, as for SmolLM2's own template.
THINKING_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking %}{{ '<think>\\n' }}"
    "{%- else %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


@pytest.fixture(scope="session")
def tools_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    """The bundled model, 4 slots x 1024 tokens, two threads."""
    template: Path = tmp_path_factory.mktemp("tpl") / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE)
    args = ["--model", str(model_path), "--parallel", "4", "--ctx-size", "4096", "--threads", "2"]
    args += ["--chat-template", str(template)]
    with RemoteServer(args) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(tools_server: RemoteServer):  # type: ignore[no-untyped-def]
    """The official openai client pointed at the shared server."""
    return tools_server.client()
