"""docs/models.md: its YAML example is read by the registry as the text says."""

from __future__ import annotations

import re
from pathlib import Path

from haloserve.config.model_registry import build_registry
from haloserve.config.serve import ServeSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"
BLOCK = re.compile(r"<!-- test: models-yaml -->\n```yaml\n(.*?)```", re.S)


def test_the_yaml_example_is_a_valid_registry(tmp_path: Path) -> None:
    (example,) = BLOCK.findall(DOC.read_text())
    text = example.replace("/srv/models/", "")  # every file next to the YAML here
    for name in re.findall(r"path: (\S+)", text):
        (tmp_path / name).write_bytes(b"GGUF")
    (tmp_path / "gemma.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    (tmp_path / "models.yaml").write_text(text)
    coder, chat, embed = build_registry(ServeSettings(models=tmp_path / "models.yaml", model_ttl=60))
    assert (coder.id, coder.aliases, coder.pinned, coder.ttl) == ("coder", ("qwen-coder",), True, 60)
    assert (coder.settings.ctx_size, coder.settings.parallel, coder.settings.cache_type_v) == (
        65536,
        2,
        "q8_0",
    )
    assert chat.ttl == 600 and chat.preload and chat.template_source and "messages" in chat.template_source
    assert (embed.settings.ctx_size, embed.settings.parallel, embed.pinned) == (8192, 8, False)
