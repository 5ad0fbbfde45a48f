"""The registry: which files of --models-dir are models, and the --models YAML with per-model settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from haloserve.config.model_registry import build_registry, model_id_for, scan_models_dir
from haloserve.config.serve import ServeSettings
from haloserve.errors import ConfigError


def touch(d: Path, *names: str) -> None:
    for name in names:
        (d / name).write_bytes(b"GGUF")


def test_models_dir_takes_ggufs_and_whole_split_sets(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "qwen3-8b-Q4_K_M.gguf",
        "big-00001-of-00002.gguf",
        "big-00002-of-00002.gguf",
        "half-00001-of-00003.gguf",
        "half-00003-of-00003.gguf",
        "notes.txt",
        "coming.gguf.part",
        ".hidden.gguf",
    )
    found, skipped = scan_models_dir(tmp_path)
    assert [p.name for p in found] == ["big-00001-of-00002.gguf", "qwen3-8b-Q4_K_M.gguf"]
    assert [model_id_for(p) for p in found] == ["big", "qwen3-8b-Q4_K_M"]
    assert any("half" in s and "2 missing" in s for s in skipped)
    assert any("notes.txt" in s and "not a .gguf" in s for s in skipped)
    assert any("coming.gguf.part" in s and "partial" in s for s in skipped)


def test_skipped_files_are_logged_with_their_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    touch(tmp_path, "a.gguf", "b.gguf.tmp")
    with caplog.at_level(logging.WARNING, logger="haloserve.models"):
        entries = build_registry(ServeSettings(models_dir=tmp_path))
    assert [e.id for e in entries] == ["a"]
    assert "b.gguf.tmp: a partial download" in caplog.text


EXAMPLE = """\
models:
  - id: coder
    path: coder.gguf
    aliases: [qwen-coder]
    ctx_size: 32768
    parallel: 2
    cache_type_k: q8_0
    cache_type_v: q8_0
    n_gpu_layers: 999
    pinned: true
  - alias: chat
    path: chat.gguf
    ttl: 600
    preload: true
"""


def test_models_file_maps_per_model_settings(tmp_path: Path) -> None:
    touch(tmp_path, "coder.gguf", "chat.gguf")
    (tmp_path / "models.yaml").write_text(EXAMPLE)
    base = ServeSettings(models=tmp_path / "models.yaml", parallel=4, ctx_size=8192)
    coder, chat = build_registry(base)
    assert coder.id == "coder" and coder.aliases == ("qwen-coder",) and coder.pinned
    s = coder.settings
    assert (s.ctx_size, s.parallel, s.cache_type_k, s.n_gpu_layers) == (32768, 2, "q8_0", -1)
    assert coder.path == tmp_path / "coder.gguf"  # relative to the file
    assert chat.id == "chat" and chat.ttl == 600 and chat.preload and not chat.pinned
    assert (chat.settings.ctx_size, chat.settings.parallel) == (8192, 4)  # the server's own


def test_models_file_entry_wins_over_the_directory_one(tmp_path: Path) -> None:
    touch(tmp_path, "chat.gguf", "other.gguf")
    (tmp_path / "m.yaml").write_text("models:\n  - {id: talk, path: chat.gguf, parallel: 1}\n")
    entries = build_registry(ServeSettings(models_dir=tmp_path, models=tmp_path / "m.yaml"))
    assert sorted(e.id for e in entries) == ["other", "talk"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{id: coder, path: c.gguf, ctx_size: -5}", "model 'coder': ctx_size: Input should be greater"),
        ("{id: coder, path: c.gguf, cache_type_k: q9}", "model 'coder': cache_type_k:"),
        ("{id: coder, path: c.gguf, port: 9000}", "model 'coder': 'port' is a server-wide setting"),
        ("{id: coder, path: c.gguf, ctx: 5}", "model 'coder': unknown setting 'ctx'"),
        ("{id: coder, path: c.gguf, ttl: soon}", "model 'coder': ttl must be a number"),
        ("{id: coder}", "models[0] needs a 'path'"),
    ],
)
def test_a_bad_entry_is_one_error_naming_model_and_field(tmp_path: Path, entry: str, expected: str) -> None:
    (tmp_path / "m.yaml").write_text(f"models:\n  - {entry}\n")
    with pytest.raises(ConfigError) as err:
        build_registry(ServeSettings(models=tmp_path / "m.yaml"))
    assert expected in err.value.message


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    touch(tmp_path, "a.gguf", "b.gguf")
    (tmp_path / "m.yaml").write_text(
        "models:\n  - {id: x, path: a.gguf}\n  - {id: y, path: b.gguf, aliases: [x]}\n"
    )
    with pytest.raises(ConfigError, match="'x' is used twice"):
        build_registry(ServeSettings(models=tmp_path / "m.yaml"))


def test_an_empty_models_dir_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no models found"):
        build_registry(ServeSettings(models_dir=tmp_path))
