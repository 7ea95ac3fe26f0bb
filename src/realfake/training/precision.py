"""The compute dtype of a training run: float32, or bfloat16 compute with float32 weights (Keras' mixed_bfloat16).

CPUs with AMX or AVX512-BF16 run bfloat16 matrix products in hardware (oneDNN uses them through TensorFlow), so
`auto` picks mixed_bfloat16 there and float32 elsewhere. Variables, losses and the model's outputs stay float32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import keras

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The feature flags of the first CPU in `cpuinfo` (empty where the file does not exist, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def resolve_precision(precision: str, *, flags: set[str] | None = None) -> str:
    """ "auto" -> "mixed_bfloat16" on a CPU with bfloat16 instructions, else "float32"; other values pass through."""
    if precision != "auto":
        return precision
    flags = cpu_flags() if flags is None else flags
    return "mixed_bfloat16" if any(flag in flags for flag in BF16_CPU_FLAGS) else "float32"


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[str]:
    """Build models inside this block to give their layers the resolved policy; yields the policy's name."""
    resolved = resolve_precision(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolved)
    try:
        yield resolved
    finally:
        keras.config.set_dtype_policy(previous)
