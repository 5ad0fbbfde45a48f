"""How model parameters reach llama.cpp: AMX detection, repacking and the load mode."""

from __future__ import annotations

from pathlib import Path

import llama_cpp as lc

from haloserve.engine.llamacpp import _set_load_mode, cpu_has_amx, uses_openmp


def test_amx_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile amx_int8 avx512_fp16\n")
    assert cpu_has_amx(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert not cpu_has_amx(info)
    assert not cpu_has_amx(tmp_path / "missing")


def test_mmap_choice_reaches_the_real_struct() -> None:
    # llama.cpp replaced use_mmap with load_mode; setting a missing ctypes field is silently ignored.
    params = lc.llama_model_default_params()
    _set_load_mode(params, False)
    fields = {name for name, *_ in type(params)._fields_}
    if "load_mode" in fields:
        assert params.load_mode == lc.LLAMA_LOAD_MODE_NONE
        _set_load_mode(params, True)
        assert params.load_mode == lc.LLAMA_LOAD_MODE_MMAP
    else:
        assert params.use_mmap is False


def test_openmp_builds_are_recognised_from_the_mapped_libraries(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n")
    assert uses_openmp(maps)
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /venv/llama_cpp/lib/libggml-cpu.so\n")
    assert not uses_openmp(maps)
    assert not uses_openmp(tmp_path / "missing")
