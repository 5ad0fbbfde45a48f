"""docs/gateway.md: its YAML parses into the settings, its examples run, its options table is current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from haloserve.config import load_settings
from haloserve.config.docs import table_for
from haloserve.config.gateway import GatewaySettings
from tests.gateway.conftest import MakeGateway, MakeUpstream

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
PY = re.compile(r"<!-- test: gateway -->\n```python\n(.*?)```", re.S)
YAML = re.compile(r"<!-- test: gateway-yaml -->\n```yaml\n(.*?)```", re.S)


def test_options_table_is_generated_from_the_settings() -> None:
    text = DOC.read_text()
    current = text.split("<!-- options:gateway:start -->\n", 1)[1].split("\n<!-- options:gateway:end -->", 1)[
        0
    ]
    assert current == table_for("gateway"), "regenerate with: python -m haloserve.config.docs gateway"


def test_yaml_example_is_a_valid_config(tmp_path: Path) -> None:
    (block,) = YAML.findall(DOC.read_text())
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(block)
    s = load_settings(GatewaySettings, file=cfg, env={})
    assert set(yaml.safe_load(block)) <= set(GatewaySettings.model_fields)
    assert [b.weight for b in s.backends] == [1.0, 2.0] and s.backends[1].models == ["qwen3-30b"]


@pytest.mark.slow
def test_examples_run(make_upstream: MakeUpstream, make_gateway: MakeGateway) -> None:
    up = make_upstream(models=["smollm2"])
    gw = make_gateway([up.url], require_keys=True)
    key = gw.gateway.store.create_key("docs").secret
    gw.run(gw.gateway.refresh_keys())
    blocks = PY.findall(DOC.read_text())
    assert len(blocks) >= 3
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"BASE_URL": gw.base_url, "API_KEY": key, "MODEL": "smollm2"})
    assert up.stats.by_path["/v1/chat/completions"] == 2
