"""``halo deploy init``: a commented example spec for N nodes (rendered from ``templates/spec.yaml.j2``)."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined

from haloserve.errors import ConfigError

MAX_EXAMPLE_NODES = 64


def example_spec(nodes: int, out_name: str = "cluster.yaml") -> str:
    """The example spec for ``nodes`` nodes (1: seed 001's single box; 4: every engine and split)."""
    if not 1 <= nodes <= MAX_EXAMPLE_NODES:
        raise ConfigError(f"--nodes must be between 1 and {MAX_EXAMPLE_NODES} (got {nodes})")
    env = Environment(
        loader=PackageLoader("haloserve.deploy", "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template("spec.yaml.j2").render(n=nodes, out_name=out_name).rstrip("\n") + "\n"
