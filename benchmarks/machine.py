"""What the machine can do at most: memory bandwidth, GEMM rate, and the floor they put on ms per token."""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MachineLimits:
    cpu: str
    cores: int
    bandwidth_gbs: float
    gemm_gflops: float


def memory_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A process's resident memory (`VmRSS`) or its peak (`VmHWM`) in MB, from Linux /proc; 0 without it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory (`VmHWM`). The parent's `ru_maxrss` of a child is no measure:
    Linux carries the parent's peak across exec into a child started by vfork, as subprocess starts
    them; `ru_maxrss` is the fallback without /proc."""
    return memory_mb("self", "VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure() -> MachineLimits:
    """Copy bandwidth (read + write of 512 MB) and numpy's fp32 GEMM rate (2048^3, all cores), best of 5."""
    import numpy as np  # here, not above: measured processes import this module for peak_rss_mb

    source = np.ones(64 * 1024 * 1024, dtype=np.float64)
    target = np.empty_like(source)
    best = min(_timed(lambda: np.copyto(target, source)) for _ in range(5))
    bandwidth = 2 * source.nbytes / best / 1e9
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    gemm = min(_timed(lambda: a @ a) for _ in range(5))
    from edgeqa.cpu import physical_cores

    return MachineLimits(cpu_name(), physical_cores(), bandwidth, 2 * 2048**3 / gemm / 1e9)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def decoder_step_cost(artifact: Path) -> tuple[float, float]:
    """Bytes of weights read and FLOPs done per decoder step at batch 1 (lm_head included).

    Weights reached through a Gather (the embedding) count one row only.
    """
    import onnx
    from onnx import numpy_helper

    from edgeqa.manifest import Manifest

    model = onnx.load(str(artifact / Manifest.read(artifact).files["decoder"].path))
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    sizes: dict[str, tuple[int, int]] = {}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        sizes[init.name] = (array.nbytes, array.size)
    used = {name for node in model.graph.node for name in node.input}
    weight_bytes = flops = 0.0
    for name in used & set(sizes):
        nbytes, count = sizes[name]
        if count < 1024:
            continue
        if name in gathered:
            continue
        weight_bytes += nbytes
        flops += 2 * count
    return weight_bytes, flops
