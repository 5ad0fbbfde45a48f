"""The checkpoint formats ``vllm serve`` loads: bits per weight, and the format a repo or quant name means.

Below :mod:`haloserve.planner.types` (whose :class:`~haloserve.planner.types.PlanInputs` refuses a GGUF
quant named for vLLM) and :mod:`haloserve.planner.vllm` (which sizes the weights from these bits).
"""

from __future__ import annotations

import re

from haloserve.errors import ConfigError

GROUP_BITS = (16 + 4) / 128  # AWQ/GPTQ: a 16-bit scale and a 4-bit zero point per group of 128 weights

# Bits per weight of the linear layers for each checkpoint format vLLM loads; embeddings and the output
# matrix stay 16-bit in every quantised format (AutoAWQ, GPTQModel and llm-compressor FP8 leave them).
FORMATS: dict[str, float] = {
    "bf16": 16.0,
    "fp16": 16.0,
    "fp8": 8.0,
    "awq": 4 + GROUP_BITS,
    "gptq": 4 + GROUP_BITS,
    "gptq-int8": 8 + GROUP_BITS,
}
_ALIASES = {
    "bfloat16": "bf16",
    "f16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "fp8_e4m3": "fp8",
    "f8": "fp8",
    "gptq-int4": "gptq",
    "int4": "gptq",
    "int8": "gptq-int8",
    "gptq-8bit": "gptq-int8",
}
# Names quantised repos carry (``...-AWQ``, ``...-GPTQ-Int8``, ``...-FP8-Dynamic``), checked in order.
_REPO_MARKERS = (
    (re.compile(r"awq", re.I), "awq"),
    (re.compile(r"gptq.*(int8|8bit|8-bit)", re.I), "gptq-int8"),
    (re.compile(r"gptq", re.I), "gptq"),
    (re.compile(r"(^|[-_.])fp8($|[-_.])", re.I), "fp8"),
)


def vllm_format(ref: str | None, quant: str | None) -> tuple[str, str]:
    """(format, why) of the weights vLLM loads from ``ref`` when the user named ``quant`` (or not).

    A GGUF quantisation name (``Q4_K_M``) is refused: it describes llama.cpp's file, not a repo vLLM loads.
    """
    if quant:
        name = _ALIASES.get(quant.strip().lower(), quant.strip().lower())
        if name not in FORMATS:
            raise ConfigError(
                f"vLLM loads Hugging Face checkpoints: {quant!r} is not one of "
                f"{', '.join(FORMATS)} (a GGUF quantisation such as Q4_K_M is llama.cpp's; for vLLM name a "
                "quantised repo, e.g. an -AWQ one, or leave the quant out for the repo's BF16)"
            )
        return name, f"{name.upper()} as named"
    base = (ref or "").rstrip("/").rsplit("/", 1)[-1]
    for pattern, name in _REPO_MARKERS:
        if pattern.search(base):
            return name, f"{name.upper()}, from the repo name {base}"
    return "bf16", "BF16, the repo's 16-bit checkpoint"
