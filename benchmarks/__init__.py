"""The side-by-side CPU benchmark: edgeqa's runtime against PyTorch, Optimum and CTranslate2.

Importable as `edgeqa.bench` (`edgeqa.bench.run.run_benchmark`); run it with `edgeqa bench --compare`
or `python -m benchmarks`. This package imports nothing: each engine's worker process
(`edgeqa.bench.worker`) must hold only what its engine loads, or every peak RSS would include
the harness (numpy alone is 15 MB, and CTranslate2 does not need it).
"""
