"""What ``halo serve`` does with its environment: every ``LLAMA_ARG_*``/``HALO_*`` is used, refused or named.

A setting is honoured or refused, never silently dropped:

- the variables of :class:`ServeSettings` are used (llama-server's ``LLAMA_ARG_NO_<X>`` spelling of a
  switch included);
- values this build or this server cannot honour are refused at start-up with one line (exit 2);
- any other ``LLAMA_ARG_*`` or ``HALO_*`` variable gets one warning line naming it, except the ``HALO_*``
  variables of another ``halo`` command (``HALO_BACKENDS`` of the gateway...), which belong to that
  command and are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from haloserve.config.base import HaloSettings, is_bool_field
from haloserve.config.serve import ServeSettings
from haloserve.errors import ConfigError

PREFIXES = ("LLAMA_ARG_", "HALO_")
# llama-server variables plan/deploy may emit that have no meaning in halo serve, and why.
NO_EFFECT = {
    "LLAMA_ARG_CACHE_RAM": "llama-server's host-RAM prompt cache; halo serve reuses prompt prefixes from"
    " each slot's KV cache instead",
}
# llama-server variables with no halo serve option whose value halo serve already honours: (accepted
# values, why another value is refused).
FIXED = {
    "LLAMA_ARG_FIT": (
        frozenset({"off"}),
        "halo serve never shrinks the context to fit memory; size it with `halo plan` and set it to off",
    ),
    "LLAMA_ARG_JINJA": (
        frozenset({"1", "true", "on", "yes", "enabled"}),
        "halo serve always renders the model's Jinja chat template (another one: --chat-template)",
    ),
}
# HALO_* variables read outside any settings class (doctor's traceback switch).
PROCESS_WIDE = frozenset({"HALO_DEBUG"})
_TRUE = frozenset({"1", "true", "on", "yes", "enabled"})


def _switches() -> dict[str, str]:
    """``LLAMA_ARG_NO_<X>`` -> ``LLAMA_ARG_<X>`` for every switch with a llama-server variable."""
    out = {}
    for name, field in ServeSettings.model_fields.items():
        if is_bool_field(field):
            for var in ServeSettings.env_names(name)[1:]:
                if var.startswith("LLAMA_ARG_"):
                    out["LLAMA_ARG_NO_" + var.removeprefix("LLAMA_ARG_")] = var
    return out


def serve_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment with llama-server's negative switches (``LLAMA_ARG_NO_MMAP=1``) turned into the
    positive variable (``LLAMA_ARG_MMAP=false``); a positive variable that is set wins."""
    env = dict(environ)
    for neg, pos in _switches().items():
        raw = env.get(neg)
        if raw and not env.get(pos):
            env[pos] = "false" if raw.strip().lower() in _TRUE else "true"
    return env


def _other_commands() -> set[str]:
    from haloserve.config.bench import BenchSettings
    from haloserve.config.doctor import DoctorSettings
    from haloserve.config.gateway import GatewaySettings, KeysSettings
    from haloserve.config.plan import PlanSettings
    from haloserve.config.rpc_worker import RpcWorkerSettings

    classes: Iterable[type[HaloSettings]] = (
        BenchSettings,
        DoctorSettings,
        GatewaySettings,
        KeysSettings,
        PlanSettings,
        RpcWorkerSettings,
    )
    return {var for cls in classes for f in cls.model_fields for var in cls.env_names(f)}


def env_warnings(environ: Mapping[str, str]) -> list[str]:
    """One line per ``LLAMA_ARG_*``/``HALO_*`` variable that ``halo serve`` does not use."""
    known = {v for f in ServeSettings.model_fields for v in ServeSettings.env_names(f)}
    known |= set(_switches()) | set(FIXED)
    others = _other_commands() | PROCESS_WIDE
    out = []
    for var in sorted(environ):
        if not var.startswith(PREFIXES) or var in known:
            continue
        if var in NO_EFFECT:
            out.append(f"{var} is ignored: {NO_EFFECT[var]}")
        elif var.startswith("HALO_") and var in others:
            continue  # another halo command's setting (documented in docs/serve.md)
        else:
            out.append(f"{var} is not a halo serve setting: ignored (see halo serve --help)")
    return out


def check_environ(environ: Mapping[str, str]) -> None:
    """Refuse a llama-server-only variable whose value halo serve cannot honour (see :data:`FIXED`)."""
    for var, (accepted, why) in FIXED.items():
        raw = environ.get(var)
        if raw and raw.strip().lower() not in accepted:
            raise ConfigError(f"{var}={raw}: {why}")


def check_settings(s: ServeSettings) -> None:
    """Refuse values halo serve cannot honour, whatever the build (one line, :class:`ConfigError`)."""
    if s.rpc and s.split_mode in ("row", "tensor"):
        raise ConfigError(
            f"--split-mode {s.split_mode} with --rpc: RPC workers take whole layers; use --split-mode layer"
        )
    if s.rpc and s.engine == "fake":
        raise ConfigError("--rpc with --engine fake: the fake engine has no model to split over RPC workers")
    if s.rpc:
        from haloserve.engine.rpc import parse_endpoints

        for ep in parse_endpoints(s.rpc):  # one line naming a malformed or repeated address
            ep.for_ggml()
    if not s.swa_full:
        raise ConfigError(
            "--no-swa-full (LLAMA_ARG_SWA_FULL=false): halo serve reuses prompt prefixes from each slot's"
            " KV cache, which needs full-size sliding-window caches"
        )
    if s.rope_scale and s.rope_freq_scale and abs(s.rope_freq_scale * s.rope_scale - 1.0) > 1e-6:
        raise ConfigError(
            f"--rope-scale {s.rope_scale:g} and --rope-freq-scale {s.rope_freq_scale:g} disagree"
            f" (--rope-scale N means --rope-freq-scale 1/N); give one of them"
        )


def check_build(s: ServeSettings, gpus: list[str], mlock_supported: bool, rpc_devices: int = 0) -> list[str]:
    """Refuse what this llama.cpp build cannot do; returns the warnings it can live with.

    ``gpus`` names the build's GPU devices (ggml's registry); empty on a CPU-only build. ``rpc_devices``
    counts the devices the ``--rpc`` workers expose (llama.cpp puts them before the local GPUs).
    """
    if s.rpc:
        n = rpc_devices + len(gpus)
        if s.tensor_split and len(s.tensor_split) != n:
            raise ConfigError(
                f"--tensor-split (LLAMA_ARG_TENSOR_SPLIT) has {len(s.tensor_split)} parts but there are {n}"
                f" devices: {rpc_devices} on the --rpc workers, then {len(gpus)} local GPU(s)"
                f"{': ' + ', '.join(gpus) if gpus else ''}; give one part per device"
            )
        if s.main_gpu >= n:
            raise ConfigError(f"--main-gpu {s.main_gpu}: there are {n} devices (RPC workers and local GPUs)")
    else:
        if s.tensor_split and len(s.tensor_split) > max(1, len(gpus)):
            raise ConfigError(
                f"--tensor-split (LLAMA_ARG_TENSOR_SPLIT) has {len(s.tensor_split)} parts but this llama.cpp"
                f" build has {len(gpus)} GPU device(s){': ' + ', '.join(gpus) if gpus else ''}"
            )
        if s.split_mode in ("row", "tensor") and not gpus:
            raise ConfigError(
                f"--split-mode {s.split_mode}: this llama.cpp build has no GPU device to split over"
            )
        if s.main_gpu >= max(1, len(gpus)):
            raise ConfigError(f"--main-gpu {s.main_gpu}: this llama.cpp build has {len(gpus)} GPU device(s)")
    if s.mlock and not mlock_supported:
        raise ConfigError("--mlock (LLAMA_ARG_MLOCK): this llama.cpp build cannot lock memory")
    warnings = []
    if s.rpc and s.n_gpu_layers == 0:
        warnings.append("-ngl 0 with --rpc: every layer stays on this node's CPU and the workers get none")
    if not gpus and not s.rpc and s.n_gpu_layers != 0 and "n_gpu_layers" in s.model_fields_set:
        layers = "all layers" if s.n_gpu_layers < 0 else f"{s.n_gpu_layers} layers"
        warnings.append(
            f"-ngl asks for {layers} on a GPU but this llama.cpp build has no GPU backend (CPU only):"
            " every layer runs on the CPU"
        )
    return warnings
