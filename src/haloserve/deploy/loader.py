"""Load a deploy spec from YAML with errors that point at ``file:line``.

PyYAML's composer keeps a mark (line, column) on every node; :func:`line_index` maps each path
(``("models", 0, "nodes", 1)``) to its line, so pydantic's error locations and the cross-reference checks
below can name the line to fix. Duplicate keys, which PyYAML would silently collapse, are errors too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from haloserve.deploy.rocm import too_old
from haloserve.deploy.spec import DeploySpec
from haloserve.errors import ConfigError

Loc = tuple[str | int, ...]
RAY_PORTS = (6379, 8265)  # Ray's GCS and dashboard on the head node


@dataclass(frozen=True)
class Problem:
    """One mistake in the spec and where it is."""

    loc: Loc
    message: str


class SpecError(ConfigError):
    """A spec that cannot be deployed, with its ``file:line`` in the message."""


def _walk(node: yaml.Node, path: Loc, lines: dict[Loc, int], dupes: list[tuple[Loc, int]]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            sub = (*path, name)
            if name in seen:
                dupes.append((sub, key.start_mark.line + 1))
            seen.add(name)
            lines[sub] = key.start_mark.line + 1
            _walk(value, sub, lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, dupes)


def line_index(text: str) -> tuple[dict[Loc, int], list[tuple[Loc, int]]]:
    """Line of every path in the YAML ``text``, and the duplicate keys found."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[Loc, int] = {}
    dupes: list[tuple[Loc, int]] = []
    if root is not None:
        _walk(root, (), lines, dupes)
    return lines, dupes


def line_of(lines: dict[Loc, int], loc: Loc) -> int:
    """The line of ``loc``, or of its nearest ancestor present in the file."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def dotted(loc: Loc) -> str:
    """``("models", 0, "nodes")`` -> ``models[0].nodes``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fail(where: str, lines: dict[Loc, int], problems: list[Problem]) -> SpecError:
    first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    path = f"{dotted(first.loc)}: " if first.loc else ""
    return SpecError(f"{where}:{line_of(lines, first.loc)}: {path}{first.message}{more}")


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "literal_error" and "input" in err:
            msg = f"{msg} (got {err['input']!r})"
        out.append(Problem(tuple(loc), msg.removeprefix("Value error, ")))
    return out


@dataclass(frozen=True)
class Document:
    """A validated spec with where it came from and the line of every key (for later errors)."""

    spec: DeploySpec
    where: str
    lines: dict[Loc, int]
    text: str = ""


def load_spec_text(text: str, where: str = "<spec>") -> Document:
    """Parse and validate a spec; raises :class:`SpecError` naming ``where:line`` on the first mistake."""
    try:
        lines, dupes = line_index(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise SpecError(f"{where}:{line}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{where}: not valid YAML: {exc}") from None
    if dupes:
        raise _fail(where, lines, [Problem(loc, "duplicate key") for loc, _ in dupes])
    if not isinstance(data, dict):
        raise SpecError(
            f"{where}:1: a deploy spec is a mapping with nodes: and models: (see `halo deploy init`)"
        )
    try:
        spec = DeploySpec.model_validate(data)
    except ValidationError as exc:
        raise _fail(where, lines, _pydantic_problems(exc)) from None
    problems = list(cross_check(spec))
    if problems:
        raise _fail(where, lines, problems)
    return Document(spec, where, lines, text)


def load_spec(path: Path) -> Document:
    """Read and validate the spec at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    return load_spec_text(text, str(path))


def _duplicates(names: Iterable[str]) -> Iterator[tuple[int, str]]:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            yield i, name
        seen.add(name)


def cross_check(spec: DeploySpec) -> Iterator[Problem]:
    """Mistakes pydantic cannot see: references, duplicates, port clashes, engine/split combinations."""
    node_names = [n.name for n in spec.nodes]
    for i, name in _duplicates(node_names):
        yield Problem(("nodes", i, "name"), f"duplicate node name {name!r}")
    for i, name in _duplicates(m.name for m in spec.models):
        yield Problem(("models", i, "name"), f"duplicate model name {name!r}")
    known = ", ".join(node_names)
    for i, model in enumerate(spec.models):
        for j, name in enumerate(model.nodes):
            if name not in node_names:
                yield Problem(("models", i, "nodes", j), f"unknown node {name!r} (nodes: {known})")
        for j, name in _duplicates(model.nodes):
            yield Problem(("models", i, "nodes", j), f"node {name!r} listed twice")
        yield from _engine_problems(spec, i)
    old = too_old(spec.rocm_version) if spec.backend == "rocm" else None
    if old:
        yield Problem(("rocm_version",), old)
    if spec.gateway and spec.gateway.node not in node_names:
        yield Problem(("gateway", "node"), f"unknown node {spec.gateway.node!r} (nodes: {known})")
    yield from port_clashes(spec)


def _engine_problems(spec: DeploySpec, i: int) -> Iterator[Problem]:
    model = spec.models[i]
    if model.split != "none" and model.replicas is not None:
        yield Problem(("models", i, "replicas"), "a split model runs once over its nodes: drop replicas")
    if model.split == "none" and not model.nodes and model.replicas is None:
        yield Problem(("models", i), "give nodes: (where it runs) or replicas: (how many, placed by fit)")
    candidates = len(model.nodes or spec.nodes)
    if model.replicas is not None and model.replicas > candidates:
        yield Problem(
            ("models", i, "replicas"), f"{model.replicas} replicas but {candidates} candidate node(s)"
        )
    if model.split != "none" and len(model.nodes) < 2:
        yield Problem(("models", i, "split"), f"split {model.split} needs at least 2 nodes")
    if model.split == "rpc" and model.engine not in ("llamacpp", "halo"):
        yield Problem(
            ("models", i, "engine"), "split rpc runs llama.cpp's RPC backend: use engine halo or llamacpp"
        )
    if model.split == "rpc" and model.engine == "halo":
        for j, name in enumerate(model.nodes[1:], start=1):
            node = next((n for n in spec.nodes if n.name == name), None)
            bind = (node.rdma.address if node.rdma else node.address) if node else None
            if bind is not None and not _ipv4(bind):
                yield Problem(
                    ("models", i, "nodes", j),
                    f"node {name!r} would run halo rpc-worker on {bind!r}: it listens on an IPv4 address; "
                    "give the node an rdma: section or an IPv4 address",
                )
    if model.split == "tensor-parallel" and model.engine != "vllm":
        yield Problem(("models", i, "engine"), "split tensor-parallel runs vLLM + Ray: use engine vllm")
    if model.engine == "vllm" and spec.backend != "rocm":
        yield Problem(("models", i, "engine"), "vLLM needs the ROCm backend (backend: rocm)")
    if model.engine in ("llamacpp", "halo") and not model.file:
        yield Problem(("models", i), f"engine {model.engine} needs file: (the GGUF name in models_dir)")
    if model.split == "tensor-parallel":
        for j, name in enumerate(model.nodes):
            node = next((n for n in spec.nodes if n.name == name), None)
            if node is not None and node.rdma is None:
                yield Problem(
                    ("models", i, "nodes", j),
                    f"node {name!r} has no rdma: section; NCCL/RCCL needs the RoCE interface for "
                    "tensor parallelism",
                )


def _ipv4(value: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)
    except ValueError:
        return False


def node_ports(spec: DeploySpec) -> dict[str, list[tuple[int, str, Loc]]]:
    """Host ports each node publishes: (port, what, where in the spec)."""
    used: dict[str, list[tuple[int, str, Loc]]] = {n.name: [] for n in spec.nodes}
    for i, model in enumerate(spec.models):
        if model.replicas is not None:  # placed by the fit check, which checks ports then
            continue
        placed = model.nodes if model.split == "none" else model.nodes[:1]
        for name in placed:
            used.setdefault(name, []).append((model.port, f"model {model.name}", ("models", i, "port")))
        if model.split == "rpc":
            for name in model.nodes[1:]:
                used.setdefault(name, []).append(
                    (model.rpc_port, f"{model.name} RPC worker", ("models", i, "rpc_port"))
                )
        if model.split == "tensor-parallel":
            for port in RAY_PORTS:
                used.setdefault(model.nodes[0], []).append((port, f"{model.name} Ray head", ("models", i)))
    if spec.gateway:
        used.setdefault(spec.gateway.node, []).append((spec.gateway.port, "the gateway", ("gateway", "port")))
    return used


def port_clashes(spec: DeploySpec) -> Iterator[Problem]:
    """Two services publishing the same port on one node."""
    for node, ports in node_ports(spec).items():
        taken: dict[int, str] = {}
        for port, what, loc in ports:
            if port in taken:
                yield Problem(loc, f"port {port} on node {node} is already used by {taken[port]}")
            else:
                taken[port] = what
