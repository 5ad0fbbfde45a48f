"""haloserve: serve LLMs through an OpenAI-compatible API on AMD Strix Halo, from one box to a cluster."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("haloserve")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
