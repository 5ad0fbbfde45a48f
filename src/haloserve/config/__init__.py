"""Settings for every command: declared once as typed fields (see ``config/base.py``)."""

from haloserve.config.base import HaloSettings, load_settings, option

__all__ = ["HaloSettings", "load_settings", "option"]
