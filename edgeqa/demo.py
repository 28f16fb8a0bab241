"""`edgeqa demo`: the whole pipeline offline on the bundled data — fine-tune, export int8, answer."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from edgeqa.errors import ConfigError
from edgeqa.records import read_records, sample_data

logger = logging.getLogger(__name__)

#: A small FLAN-T5-shaped model (FLAN-T5's vocabulary) that learns something in minutes on 2 cores.
DEMO_SHAPE = dict(
    d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=32
)
SAMPLE_QUESTIONS = (
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "What is photosynthesis?",
)


@dataclass(frozen=True)
class DemoResult:
    output: Path
    artifact: Path
    answers: list[tuple[str, str]]
    parity_table: str
    artifact_mb: float
    checkpoint_mb: float


def _short_answer_split(folder: Path, max_answer_chars: int, limit: int) -> Path:
    """Bundled train/validation records with short answers: what a small model can learn in minutes."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        records = [r for r in read_records(sample_data(split)) if len(r.answer) <= max_answer_chars]
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in records[:limit]:
                f.write(json.dumps({"question": r.question, "answer": r.answer}, ensure_ascii=False) + "\n")
    return folder


def run_demo(
    output: Path, model: str | None = None, max_steps: int = 400, parity_samples: int = 64, force: bool = False
) -> DemoResult:
    """Fine-tune (a demo-sized model, or `model`), export to int8 with the parity gate, answer samples."""
    from edgeqa.export import ExportConfig, export_artifact
    from edgeqa.finetune import FinetuneConfig, finetune
    from edgeqa.runtime import QAModel

    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise ConfigError(f"{output} is not empty; pass --force to run the demo again there, or another --output")
    output.mkdir(parents=True, exist_ok=True)
    if model is None:
        logger.info("demo 1/4: building a %s-parameter FLAN-T5-shaped model (no pretrained weights offline)", "9M")
        from edgeqa.finetune.models import build_random_t5

        model = str(build_random_t5(output / "base-model", initializer_factor=0.5, **DEMO_SHAPE))
    data = _short_answer_split(output / "data", max_answer_chars=100, limit=1024)
    logger.info("demo 2/4: fine-tuning on %s for %d steps", data, max_steps)
    run = finetune(
        FinetuneConfig(
            model=model,
            data=str(data),
            output_dir=output / "run",
            epochs=1000,
            max_steps=max_steps,
            learning_rate=3e-3,
            batch_size=16,
            eval_batch_size=32,
            max_eval_samples=64,
            eval_max_new_tokens=24,
            logging_steps=50,
            overwrite=True,
        )
    )
    logger.info("demo 3/4: exporting to int8 ONNX with the parity gate")
    artifact = output / "model-int8"
    exported = export_artifact(
        ExportConfig(
            checkpoint=str(run.final_dir),
            output=artifact,
            quantize="int8",
            parity_samples=parity_samples,
            parity_max_new_tokens=32,
            force=True,
        )
    )
    logger.info("demo 4/4: answering with the CPU runtime (onnxruntime + tokenizers + numpy)")
    qa = QAModel.load(artifact)
    answers = [(q, qa.answer(q, max_new_tokens=32).text) for q in SAMPLE_QUESTIONS]
    checkpoint_mb = sum(p.stat().st_size for p in run.final_dir.iterdir() if p.is_file()) / 1e6
    return DemoResult(
        output=output,
        artifact=artifact,
        answers=answers,
        parity_table=exported.parity.table() if exported.parity else "",
        artifact_mb=exported.manifest.total_bytes / 1e6,
        checkpoint_mb=checkpoint_mb,
    )
