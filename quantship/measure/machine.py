"""What machine a figure was measured on: the CPU, its instruction-set extensions that
decide which kernels runtimes pick (AVX2, AVX-512 VNNI, AVX-512 BF16, AMX), cores.
Read from /proc/cpuinfo; elsewhere, what the platform module knows."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The extensions INT8 and bf16 kernels are chosen by, in /proc/cpuinfo's spelling.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
    "asimd",
    "asimddp",
    "sve",
)


def cpu_info() -> dict[str, Any]:
    model, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "machine": platform.machine(),
    }


def isa_line() -> str:
    """The CPU in one line, for a table's title: model, cores, the extensions."""
    info = cpu_info()
    return f"{info['cpu']}, {info['cores']} cores, {' '.join(info['isa']) or 'no listed ISA'}"


def machine_record() -> dict[str, Any]:
    """What a result file records of the machine it was measured on: the CPU (model,
    cores, ISA flags by their /proc/cpuinfo names), memory, OS, Python, host name."""
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    return {
        **cpu_info(),
        "memory_bytes": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "node": platform.node(),
    }
