"""The side-by-side CPU benchmark: edgeqa's runtime against PyTorch, Optimum and CTranslate2.

Importable as `edgeqa.bench`; run it with `edgeqa bench --compare` or `python -m benchmarks`.
"""

from edgeqa.bench.run import BenchConfig, BenchResult, run_benchmark

__all__ = ["BenchConfig", "BenchResult", "run_benchmark"]
