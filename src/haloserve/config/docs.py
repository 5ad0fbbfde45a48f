"""Reference tables for the docs, generated from the settings fields (so docs never drift).

``python -m haloserve.config.docs serve`` prints the Markdown table of ``halo serve``'s options;
``tests/serve/test_docs.py`` checks that ``docs/serve.md`` holds the current one.
"""

from __future__ import annotations

import importlib
import sys
from enum import Enum

from haloserve.config.base import HaloSettings, field_extra, flag_name

SETTINGS = {
    "serve": "haloserve.config.serve:ServeSettings",
    "gateway": "haloserve.config.gateway:GatewaySettings",
    "rpc-worker": "haloserve.config.rpc_worker:RpcWorkerSettings",
}


def options_table(cls: type[HaloSettings]) -> str:
    """A Markdown table: flag (and aliases), environment variables, default, description."""
    rows = ["| flag | environment | default | description |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        extra = field_extra(field)
        flags = ", ".join(f"`{f}`" for f in [flag_name(name), *extra.get("aliases", [])])
        env = ", ".join(f"`{v}`" for v in cls.env_names(name))
        if field.default_factory is not None:
            default = "(computed)"
        else:
            value = field.default.value if isinstance(field.default, Enum) else field.default
            default = "" if value in (None, "", []) else f"`{value}`"
        text = (field.description or "").replace("|", "\\|")
        rows.append(f"| {flags} | {env} | {default} | {text} |")
    return "\n".join(rows)


def table_for(command: str) -> str:
    """The options table of ``command``."""
    module, _, cls_name = SETTINGS[command].partition(":")
    return options_table(getattr(importlib.import_module(module), cls_name))


if __name__ == "__main__":
    print(table_for(sys.argv[1] if len(sys.argv) > 1 else "serve"))
