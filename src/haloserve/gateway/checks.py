"""Checks of the gateway's settings before it starts, and the TLS context its backends are reached with."""

from __future__ import annotations

import ssl
from pathlib import Path

from haloserve.config.gateway import GatewaySettings, resolve_secret
from haloserve.errors import ConfigError


def check_settings(settings: GatewaySettings) -> None:
    """Refuse to start without backends, or with a --backend-ca that is not a readable PEM file."""
    if not settings.backends and settings.backends_file is None:
        raise ConfigError(
            "no backends: give --backend URL (repeatable), 'backends:' in --config, or --backends-file"
        )
    resolve_secret(settings.admin_key, "--admin-key")
    backend_ssl_context(settings.backend_ca)


def backend_ssl_context(ca: Path | None) -> ssl.SSLContext:
    """TLS settings for https:// backends: the system's trust store, plus ``ca`` when given."""
    ctx = ssl.create_default_context()
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except FileNotFoundError:
            raise ConfigError(f"--backend-ca: {ca}: no such file") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--backend-ca: {ca}: not a PEM file of certificates ({exc})") from None
    return ctx
