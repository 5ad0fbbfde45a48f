"""Finding ggml's RPC API in the loaded library, and the one clear error when the build has none."""

from __future__ import annotations

from collections.abc import Iterator

import llama_cpp
import pytest

from haloserve.engine import rpc
from haloserve.errors import CommandError


@pytest.fixture
def fresh_lookup() -> Iterator[None]:
    """Forget the cached lookup before and after, so a patched library does not leak into other tests."""
    rpc.rpc_api.cache_clear()
    yield
    rpc.rpc_api.cache_clear()


def test_library_without_rpc_is_one_error_naming_the_rebuild(
    fresh_lookup: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(llama_cpp, "llama_supports_rpc", lambda: False)
    with pytest.raises(CommandError, match="built without ggml's RPC backend") as info:
        rpc.rpc_api()
    assert "-DGGML_RPC=ON" in info.value.message and "--no-cache-dir" in info.value.message
    assert not rpc.has_rpc()
    assert rpc.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("no RPC:") and err.count("\n") == 1


def test_registry_without_the_entry_points_is_the_same_error(
    fresh_lookup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a build that says it has RPC but whose registry and exports have neither add_server nor add_device
    monkeypatch.setattr(llama_cpp, "llama_supports_rpc", lambda: True)
    monkeypatch.setattr(rpc, "_entry_point", lambda g, reg, name: None)
    with pytest.raises(CommandError, match="has no RPC server/client API") as info:
        rpc.rpc_api()
    assert "-DGGML_RPC=ON" in info.value.message


def test_check_reports_what_the_installed_library_has(capsys: pytest.CaptureFixture[str]) -> None:
    rpc.rpc_api.cache_clear()
    code = rpc.main(["--check"])
    out, err = capsys.readouterr()
    assert code == (0 if rpc.has_rpc() else 1)
    assert (out if code == 0 else err).startswith("RPC: yes" if code == 0 else "no RPC:")
    assert rpc.main([]) == 2
