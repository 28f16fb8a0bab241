#!/usr/bin/env bash
# The fine-tuning benchmark on a GPU machine with no network, in one command (docs/benchmarks.md):
#   make gpu-wheels                                  # here: what that machine's Python lacks, into .whl/
#   bash benchmarks/gpu_finetune_speed.sh [ARGS...]  # there: ARGS go to python -m edgeqa.bench.finetune_speed
# .whl/ is git-ignored: copy it there with the checkout. The machine's own torch, transformers and
# accelerate are used; the wheels and edgeqa (from this checkout) go into a folder on PYTHONPATH.
# Results, the versions and a GPU utilisation trace land in $OUT (default bench-results/), the
# results rewritten after each setting so that a run cut off keeps its rows.
set -euo pipefail
OUT=$(realpath -m "${OUT:-bench-results}")
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${EDGEQA_SITE:-/tmp/edgeqa-site}
mkdir -p "$OUT"
install=(-m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE")
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" "${install[@]}" .whl/*.whl
fi
"$PY" "${install[@]}" --no-build-isolation .
# PYTHONSAFEPATH: the checkout's own edgeqa/ folder (no bench, finetune, ... inside) must not shadow the install.
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# Fail here, in seconds, if a package is missing or the GPU is not usable, rather than after a setting.
"$PY" - <<'PY' | tee "$OUT/versions.txt"
import importlib.metadata as m, platform, shutil, sys, torch
import datasets, nltk  # noqa: F401
import edgeqa.bench.finetune_speed  # noqa: F401  (imports the fine-tuning stack)
from edgeqa.metrics import rouge
rouge(["a b."], ["a b."])  # rouge_score and what it imports
names = ["edgeqa", "torch", "transformers", "accelerate", "datasets", "tokenizers", "rouge_score", "nltk"]
print(f"python {platform.python_version()}", *(f"{n} {m.version(n)}" for n in names), sep="\n")
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")
if shutil.which("nvidia-smi") and not torch.cuda.is_available():
    sys.exit("nvidia-smi is here but torch sees no GPU: the benchmark would run on the CPU")
PY
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 >"$OUT/gpu-utilisation.csv" &
  trap 'kill $! 2>/dev/null || true' EXIT
fi
"$PY" -m edgeqa.bench.finetune_speed --output "$OUT" "$@"
