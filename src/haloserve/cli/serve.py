"""``halo serve``: the OpenAI-compatible API of one node."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from haloserve.cli.options import add_settings_arguments, settings_flags
from haloserve.config import load_settings
from haloserve.config.serve import ServeSettings
from haloserve.errors import CommandError

HELP = "Serve a GGUF model through the OpenAI API with continuous batching."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags generated from :class:`ServeSettings`, plus ``--config``."""
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="YAML file of settings (flags and env win)."
    )
    add_settings_arguments(parser, ServeSettings)


def setup_logging(level: str) -> None:
    """Compact timestamped logs on stderr; llama.cpp's own chatter only at debug level."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    if level != "debug":
        logging.getLogger("haloserve.llama").setLevel(logging.WARNING)


def warn(line: str) -> None:
    """One start-up warning line on stderr."""
    print(f"halo serve: warning: {line}", file=sys.stderr, flush=True)


def build_engine(settings: ServeSettings) -> Any:
    """The engine the settings ask for (the model file and the build's devices are checked before
    anything binds)."""
    if settings.engine == "fake":
        from haloserve.engine.fake import FakeEngine

        return FakeEngine(settings)
    from haloserve.bundled import bundled_model_path
    from haloserve.config.serve_env import check_build
    from haloserve.engine.devices import gpu_devices, list_devices, supports_mlock
    from haloserve.engine.llama_engine import LlamaEngine
    from haloserve.engine.llamacpp import init_backend

    path = settings.model or bundled_model_path()
    if not path.is_file():
        raise CommandError(f"model file not found: {path}")
    init_backend()
    gpus = [d.name for d in gpu_devices(list_devices())]
    if settings.rpc:
        return _rpc_engine(settings, path, gpus)
    for line in check_build(settings, gpus, supports_mlock()):
        warn(line)
    return LlamaEngine(settings, path)


def _rpc_engine(settings: ServeSettings, path: Path, gpus: list[str]) -> Any:
    """The child-process engine over the ``--rpc`` workers, once each answers the RPC handshake (a
    worker that does not is one line and exit 2, before anything loads)."""
    from haloserve.config.serve_env import check_build
    from haloserve.engine.child import LlamaSpec
    from haloserve.engine.devices import supports_mlock
    from haloserve.engine.process import ProcessEngine
    from haloserve.engine.rpc import rpc_api
    from haloserve.engine.workers import device_counts, unreachable
    from haloserve.errors import ConfigError

    try:
        rpc_api()
    except CommandError as exc:  # a build without ggml's RPC backend cannot honour --rpc
        raise ConfigError(f"--rpc: {exc.message}") from None
    down = unreachable(settings.rpc, handshake=True)
    if down:
        raise ConfigError(f"--rpc: {'; '.join(down)} (start it with `halo rpc-worker`; check the address)")
    for line in check_build(settings, gpus, supports_mlock(), rpc_devices=sum(device_counts(settings.rpc))):
        warn(line)
    return ProcessEngine(settings, LlamaSpec(settings, path))


def backend_line(backend: dict[str, Any]) -> str:
    """Devices, layers offloaded and where the weights and the KV cache live, in one line."""
    from haloserve.units import fmt_bytes

    devices = ", ".join(f"{d['name']} [{d['backend']}] ({d['description']})" for d in backend["devices"])
    weights = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in backend["weights"].items()) or "?"
    kv = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in backend["kv_cache"].items()) or "?"
    return (
        f"  backend {devices or 'none found'}; {backend['n_gpu_layers']}/{backend['n_layers']} layers on GPU;"
        f" weights on {weights}; KV cache on {kv}"
    )


def device_lines(backend: dict[str, Any]) -> list[str]:
    """With RPC devices: one line per device with the layers llama.cpp put on it and its memory."""
    from haloserve.units import fmt_bytes

    usage = backend.get("device_usage", [])
    if not any(d["backend"].startswith("RPC") for d in usage):
        return []
    return [
        f"  device {d['name']} [{d['backend']}] ({d['description']}): {d['layers']} layers,"
        f" weights {fmt_bytes(d['weights_bytes'])}, KV cache {fmt_bytes(d['kv_cache_bytes'])};"
        f" {fmt_bytes(d['memory_free'])} free of {fmt_bytes(d['memory_total'])}"
        for d in usage
    ]


def load_line(load: dict[str, Any]) -> str:
    """How long the model load in the engine process took and what it sent to the RPC workers."""
    from haloserve.units import fmt_bytes

    return f"  loaded in {load['seconds']:.1f} s; {fmt_bytes(load['bytes_sent'])} sent to the RPC workers"


def _startup_banner(state: Any, host: str, port: int) -> None:
    from haloserve.printable import printable
    from haloserve.units import fmt_bytes

    info = state.engine.info
    s = state.settings
    where = f"{printable(info.model_path)} ({printable(info.description)})"
    keys = len(state.api_keys)
    lines = [
        f"halo serve: model {state.model_id!r} from {where}",
        f"  context {info.n_ctx} tokens = {info.n_parallel} slots x {info.n_ctx_slot}"
        f" (trained {info.n_ctx_train}); KV cache {fmt_bytes(info.kv_cache_bytes)}"
        f" ({s.cache_type_k}/{s.cache_type_v})",
        *([backend_line(info.extra["backend"])] if "backend" in info.extra else []),
        *(device_lines(info.extra["backend"]) if "backend" in info.extra else []),
        *([load_line(info.extra["load"])] if "load" in info.extra else []),
        f"  listening on http://{host}:{port}/v1"
        f"  ({keys} API key{'s' if keys != 1 else ''}; queue {s.max_queue})",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _server_class(on_shutdown: Any = None) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, minus re-raising SIGTERM/SIGINT after a graceful shutdown (we exit 0 instead), and
        telling the app when shutdown begins (server/shutdown.py ends its requests properly)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

        async def shutdown(self, sockets: Any = None) -> None:
            if on_shutdown is not None:
                on_shutdown()
            await super().shutdown(sockets)

    return Server


def connection_protocol(settings: ServeSettings) -> Any:
    """uvicorn's HTTP protocol with the head, timeout and connection limits of ``settings``.

    The descriptor limit is raised to its hard limit first, so the automatic cap is sized from it.
    """
    from haloserve.protocol.connlimits import ConnLimits, raise_nofile_limit
    from haloserve.server.limits import guarded_protocol

    raise_nofile_limit()
    return guarded_protocol(ConnLimits.from_settings(settings))


def run(args: argparse.Namespace) -> int:
    """Load settings, bind, load the model in the background and serve until SIGINT/SIGTERM."""
    import uvicorn

    from haloserve.config.serve_env import check_environ, check_settings, env_warnings, serve_environ
    from haloserve.server.app import create_app

    settings = load_settings(
        ServeSettings,
        flags=settings_flags(args, ServeSettings),
        env=serve_environ(os.environ),
        file=args.config,
    )
    check_environ(os.environ)
    check_settings(settings)
    setup_logging(settings.log_level)
    for line in env_warnings(os.environ):
        warn(line)
    protocol = connection_protocol(settings)
    if settings.models_dir is not None or settings.models is not None:
        from haloserve.cli.serve_models import build_models_app

        return _serve(settings, protocol, build_models_app(settings, warn))
    engine = build_engine(settings)
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def on_load_error(message: str) -> None:
        failure.append(message)
        if server is not None:
            server.should_exit = True

    def on_ready(state: Any) -> None:
        port = server.servers[0].sockets[0].getsockname()[1] if server and server.servers else settings.port
        _startup_banner(state, settings.host, port)

    app = create_app(settings, engine, on_load_error=on_load_error, on_ready=on_ready)

    def attach(srv: uvicorn.Server) -> None:
        nonlocal server
        server = srv

    return _serve(settings, protocol, app, failure, attach)


def _serve(
    settings: ServeSettings,
    protocol: Any,
    app: Any,
    failure: list[str] | None = None,
    attach: Any = None,
) -> int:
    """Run ``app`` under uvicorn until SIGINT/SIGTERM; every state's streams get a proper end."""
    import uvicorn

    from haloserve.server.app import begin_app_shutdown
    from haloserve.server.shutdown import FLUSH_MARGIN

    def shutdown() -> None:
        begin_app_shutdown(app, settings.shutdown_timeout)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",
        http=protocol,
        timeout_keep_alive=max(1, round(settings.keepalive_timeout)),  # the protocol uses the exact value
        log_level=settings.log_level,
        access_log=False,
        # Ours ends the requests at --shutdown-timeout; uvicorn's, later, only lets those ends be written.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout + FLUSH_MARGIN),
        server_header=False,
    )
    server = _server_class(shutdown)(config)
    if attach is not None:
        attach(server)
    server.run()
    if failure:
        raise CommandError(f"model failed to load: {failure[0]}")
    if not server.started:
        raise CommandError(f"could not listen on {settings.host}:{settings.port} (address in use?)")
    return 0
