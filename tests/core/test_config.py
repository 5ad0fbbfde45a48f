"""Settings merge defaults < file < env < flags and report bad values by where they came from."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from haloserve.cli.options import (
    HaloArgumentParser,
    UsageError,
    add_settings_arguments,
    settings_flags,
)
from haloserve.config import HaloSettings, load_settings, option
from haloserve.errors import ConfigError


class Demo(HaloSettings):
    """A settings model for the tests."""

    ctx_size: int = option(4096, "Total context.", env=("LLAMA_ARG_CTX_SIZE",), aliases=("-c",))
    flash: bool = option(False, "Flash attention.")
    mode: Literal["a", "b"] = option("a", "A choice.")
    api_key: list[str] = option(default_factory=list, description="Keys.", secret=True)


def parse(argv: list[str]) -> dict[str, object]:
    parser = HaloArgumentParser(prog="demo")
    add_settings_arguments(parser, Demo)
    return settings_flags(parser.parse_args(argv), Demo)


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ctx-size: 1000\nmode: b\n")
    assert load_settings(Demo, env={}).ctx_size == 4096
    assert load_settings(Demo, env={}, file=cfg).ctx_size == 1000
    env = {"LLAMA_ARG_CTX_SIZE": "2000"}
    assert load_settings(Demo, env=env, file=cfg).ctx_size == 2000
    env["HALO_CTX_SIZE"] = "3000"  # the HALO_ name wins over the llama-server alias
    assert load_settings(Demo, env=env, file=cfg).ctx_size == 3000
    s = load_settings(Demo, env=env, file=cfg, flags=parse(["-c", "5000"]))
    assert (s.ctx_size, s.mode) == (5000, "b")


def test_lists_from_env_and_repeated_flags_and_bools() -> None:
    s = load_settings(Demo, env={"HALO_API_KEY": "k1, k2"})
    assert s.api_key == ["k1", "k2"]
    s = load_settings(Demo, env={}, flags=parse(["--api-key", "x", "--api-key", "y", "--flash"]))
    assert s.api_key == ["x", "y"] and s.flash is True
    assert load_settings(Demo, env={}, flags=parse(["--no-flash"])).flash is False
    assert s.public_dict()["api_key"] == ["***", "***"]


def test_bad_values_name_their_source() -> None:
    with pytest.raises(ConfigError, match=r"^LLAMA_ARG_CTX_SIZE: .*integer.*'abc'"):
        load_settings(Demo, env={"LLAMA_ARG_CTX_SIZE": "abc"})
    with pytest.raises(ConfigError, match=r"^--ctx-size: "):
        load_settings(Demo, env={}, flags=parse(["--ctx-size", "x"]))
    with pytest.raises(UsageError, match="invalid choice"):
        parse(["--mode", "z"])
    with pytest.raises(UsageError, match="unrecognized arguments"):
        parse(["--nope"])


def test_secret_values_are_not_echoed() -> None:
    class Secret(HaloSettings):
        token: int = option(1, "A secret number.", secret=True)

    with pytest.raises(ConfigError) as err:
        load_settings(Secret, env={"HALO_TOKEN": "hunter2"})
    assert "hunter2" not in err.value.message


def test_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(Demo, env={}, file=bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("nope: 1\n")
    with pytest.raises(ConfigError, match="unknown option 'nope'"):
        load_settings(Demo, env={}, file=unknown)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(Demo, env={}, file=tmp_path / "missing.yaml")
