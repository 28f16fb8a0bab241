"""What this CPU can do, from /proc/cpuinfo (stdlib only): cores, VNNI, the quantization preset."""

from __future__ import annotations

import os
import platform
from functools import cache

from edgeqa.manifest import CpuRecord, Preset

ARM = ("arm64", "aarch64")


@cache
def cpu_flags() -> frozenset[str]:
    """The first core's feature flags (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def is_arm() -> bool:
    return platform.machine().lower() in ARM


def has_vnni() -> bool:
    """int8 dot products without 16-bit saturation: AVX512-VNNI or AVX-VNNI (arm64 has its own dot products)."""
    return is_arm() or bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def this_cpu() -> CpuRecord:
    return CpuRecord(machine=platform.machine(), vnni=has_vnni())


def detect_preset() -> Preset:
    """The quantization preset for this CPU: arm64, avx512_vnni, avx512 or avx2."""
    if is_arm():
        return Preset.ARM64
    if has_vnni():
        return Preset.AVX512_VNNI
    if "avx512f" in cpu_flags():
        return Preset.AVX512
    return Preset.AVX2


def physical_cores() -> int:
    """Physical CPU cores (hyper-threads do not help matrix work), falling back to logical ones."""
    try:
        cores = set()
        physical = "0"
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("physical id"):
                    physical = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    cores.add((physical, line.split(":")[1].strip()))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1
