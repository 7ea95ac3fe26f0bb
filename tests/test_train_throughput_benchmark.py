"""Tests for benchmarks/train_throughput.py's record of the machine a figure was measured on."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_throughput  # noqa: E402

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8
processor\t: 1
cpu family\t: 6
model\t\t: 207
"""


def test_cpu_generation_names_family_model_and_amx():
    assert train_throughput._cpu_generation(CPUINFO.splitlines()) == " (family 6 model 207, AMX)"


def test_cpu_generation_without_amx_or_cpuinfo():
    no_amx = CPUINFO.replace(" amx_bf16 amx_tile amx_int8", "")
    assert train_throughput._cpu_generation(no_amx.splitlines()) == " (family 6 model 207)"
    assert train_throughput._cpu_generation([]) == ""
