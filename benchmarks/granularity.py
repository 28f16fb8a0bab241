"""Parity of per-token against per-tensor int8 activations, on the facts model and on outlier models.

    python -m edgeqa.bench.granularity                 # outlier scales 0 (none), 32, 128, 512

For each model, one float artifact, quantized twice from the same graphs (`levers.variant`):
activations with one scale per token row (edgeqa's default) and with one scale per tensor
(onnxruntime's `quantize_dynamic` as it comes). Both go through the same parity check against
the PyTorch checkpoint on the same 200 held-out questions (no search: plain quantization).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from edgeqa.bench.outliers import OutlierPlan, save_with_outliers, train_facts_model
from edgeqa.manifest import ActivationGranularity

GRANULARITIES = tuple(ActivationGranularity)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="0,32,128,512", help="planted outlier scales (0: none)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the models (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from edgeqa.bench.levers import variant
    from edgeqa.export import ExportConfig, export_artifact
    from edgeqa.export.config import settings_for
    from edgeqa.export.parity import run_parity
    from edgeqa.records import read_records

    print("| outlier scale | activations | ROUGE-L Δ | exact match Δ | identical answers | token agreement |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        trained = work / "facts-run" / "final"
        if not (trained / "config.json").exists():
            train_facts_model(work / "facts-run")
        records = read_records(trained / "edgeqa_heldout.jsonl")[:200]
        for scale in (int(s) for s in args.scales.split(",")):
            checkpoint = save_with_outliers(trained, work / f"outliers-{scale}", OutlierPlan(max(scale, 1)))
            fp32 = work / f"granularity-{scale}" / "fp32"
            export_artifact(ExportConfig(checkpoint=str(checkpoint), output=fp32, parity=False, force=True))
            for granularity in GRANULARITIES:
                target = fp32.parent / granularity
                variant(fp32, target, settings_for(activation_granularity=granularity))
                p = run_parity(str(checkpoint), target, records, max_new_tokens=16)
                print(
                    f"| {scale} | {granularity} | {p.rouge_l_delta * 100:+.2f} | "
                    f"{(p.artifact_exact_match - p.reference_exact_match) * 100:+.1f} | "
                    f"{p.identical_answers * 100:.1f}% | {p.token_agreement * 100:.1f}% |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
