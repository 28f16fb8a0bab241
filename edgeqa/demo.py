"""`edgeqa demo`: the whole pipeline offline on bundled data — fine-tune, export int8, answer.

The default world is the bundled facts (`edgeqa.facts`): a small model learns it in minutes on a
CPU and then answers exactly, also when asked in phrasings it never saw. `data="dolly"` runs the
same pipeline on the Dolly open-QA sample instead (long answers, scored with ROUGE).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeqa.errors import ConfigError, MissingExtraError
from edgeqa.export.config import MIN_SEARCH_QUESTIONS
from edgeqa.extras import EXTRA_MODULES, TORCH_FIRST
from edgeqa.manifest import WeightType
from edgeqa.records import read_records, sample_data

logger = logging.getLogger(__name__)

DATASETS = ("facts", "dolly")
#: A small FLAN-T5-shaped model (FLAN-T5's vocabulary) that learns the facts in minutes on 2 cores.
DEMO_SHAPE = dict(
    d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=32
)
#: The relations the demo teaches: 749 facts, which the demo model learns in 1,500 steps on 2 cores.
#: The other relations of `edgeqa.facts.RELATIONS` (1,500 cities, domains, ...) would take longer.
DEMO_RELATIONS = ("capital", "continent", "currency")
#: (relation, subject, phrasing): phrasing "train", "heldout" or an index into the relation's `unseen`.
SHOWCASE: tuple[tuple[str, str, str | int], ...] = (
    ("capital", "France", "heldout"),
    ("capital", "Japan", 1),
    ("currency", "Switzerland", "train"),
    ("continent", "Peru", 0),
    ("currency", "India", "heldout"),
)
PHRASING_NOTES = {"train": "trained phrasing", "heldout": "held-out phrasing", "unseen": "never-seen template"}
DOLLY_QUESTIONS = ("What is the capital of France?", "Who wrote Romeo and Juliet?", "What is photosynthesis?")
MAX_TEST_QUESTIONS = 800


@dataclass(frozen=True)
class Answered:
    question: str
    answer: str
    expected: str | None = None
    note: str = ""

    @property
    def correct(self) -> bool | None:
        from edgeqa.metrics import exact_match

        return None if self.expected is None else exact_match([self.answer], [self.expected]) == 1.0


@dataclass(frozen=True)
class DemoResult:
    """What the demo made and measured.

    Attributes:
        exact_match: Exact match of the int8 artifact (0-1) by split: `validation` (held-out
            phrasing) and `test` (templates never seen); empty for the Dolly data.
        questions: Test questions answered per split.
    """

    output: Path
    artifact: Path
    data: str
    answers: list[Answered]
    parity_table: str
    artifact_mb: float
    checkpoint_mb: float
    history: list[dict[str, float]] = field(default_factory=list)
    exact_match: dict[str, float] = field(default_factory=dict)
    questions: dict[str, int] = field(default_factory=dict)


def _short_answer_split(folder: Path, max_answer_chars: int, limit: int) -> Path:
    """Bundled train/validation records with short answers: what a small model can learn in minutes."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        records = [r for r in read_records(sample_data(split)) if len(r.answer) <= max_answer_chars]
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in records[:limit]:
                f.write(json.dumps({"question": r.question, "answer": r.answer}, ensure_ascii=False) + "\n")
    return folder


def facts_data(
    folder: Path, relations: tuple[str, ...] = DEMO_RELATIONS, train_phrasings: int | None = None
) -> dict[str, Path]:
    """Write the demo's facts splits (train, validation = held-out phrasing, test = unseen templates)."""
    from edgeqa.facts import load_facts, make_splits, write_splits

    return write_splits(folder, make_splits(load_facts(relations), train_phrasings=train_phrasings))


def showcase() -> list[Answered]:
    """The demo's sample questions with their expected answers, from the fact tables."""
    from edgeqa.facts import RELATIONS, load_facts

    known = {(f.relation, f.subject): f.answer for f in load_facts({r for r, _, _ in SHOWCASE})}
    picked = []
    for relation, subject, phrasing in SHOWCASE:
        templates = RELATIONS[relation]
        if isinstance(phrasing, int):
            template, note = templates.unseen[phrasing], PHRASING_NOTES["unseen"]
        else:
            template = templates.heldout if phrasing == "heldout" else templates.train[0]
            note = PHRASING_NOTES[phrasing]
        picked.append(Answered(template.format(s=subject), "", known[relation, subject], note))
    return picked


@dataclass(frozen=True)
class Schedule:
    """How the demo trains on one data set."""

    max_steps: int
    batch_size: int
    learning_rate: float
    eval_steps: int
    max_eval_samples: int
    max_target_tokens: int
    parity_samples: int
    parity_max_new_tokens: int


SCHEDULES = {
    # Measured on 2 cores: see the README's tour for the learning curve it gives.
    "facts": Schedule(1500, 32, 3e-3, 375, 400, 32, 400, 16),
    "dolly": Schedule(400, 16, 3e-3, 100, 64, 512, 64, 32),
}


#: What a demo runs on: fine-tuning and export, the `all` extra.
PIPELINE_MODULES = tuple(dict.fromkeys(EXTRA_MODULES["train"] + EXTRA_MODULES["export"]))


def require_pipeline() -> None:
    """Refuse, before anything is written, an environment without the `all` extra the demos fine-tune and
    export with (naming one missing extra would only lead to the other).

    Raises:
        MissingExtraError: naming the first missing module and the install that brings them all.
    """
    missing = next((m for m in PIPELINE_MODULES if importlib.util.find_spec(m) is None), None)
    if missing:
        raise MissingExtraError(
            f"edgeqa demo fine-tunes and exports: it needs {missing}, which is not installed: "
            f"pip install 'edgeqa[all]' ({TORCH_FIRST})"
        )


def prepare_output(output: Path, force: bool, **counts: tuple[int | None, int]) -> Path:
    """Check a demo's settings before anything is written, then create its `output` folder.

    Args:
        counts: (value given by the user, None for the demo's default; the least it may be) by option.

    Raises:
        ConfigError: a count below its least, an `output` that is a file, or a non-empty one without `force`.
    """
    for name, (value, least) in counts.items():
        if value is not None and value < least:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; pass a folder for everything the demo writes")
    if output.exists() and any(output.iterdir()) and not force:
        raise ConfigError(f"{output} is not empty; pass --force to run the demo again there, or another --output")
    output.mkdir(parents=True, exist_ok=True)
    return output


def run_demo(
    output: Path,
    data: str = "facts",
    model: str | None = None,
    max_steps: int | None = None,
    parity_samples: int | None = None,
    force: bool = False,
    progress_bars: bool = False,
    train_phrasings: int | None = None,
) -> DemoResult:
    """Fine-tune (a demo-sized model, or `model`), export to int8 with the parity gate, answer samples.

    Args:
        train_phrasings: facts only: train on the first this many phrasings of each relation [all]
            (`edgeqa.bench.demo_kernels` compares).

    Raises:
        ConfigError: an unknown `data`, or a setting `prepare_output` refuses.
    """
    require_pipeline()
    from edgeqa.export import ExportConfig, export_artifact
    from edgeqa.finetune import FinetuneConfig, finetune
    from edgeqa.runtime import QAModel

    if data not in DATASETS:
        raise ConfigError(f"demo data {data!r} is not one of {', '.join(DATASETS)}")
    if train_phrasings is not None and (data != "facts" or train_phrasings < 1):
        raise ConfigError(f"train_phrasings takes a number from 1 with the facts data; got {train_phrasings} ({data})")
    schedule = SCHEDULES[data]
    output = prepare_output(
        output,
        force,
        max_steps=(max_steps, 1),
        parity_samples=(parity_samples, MIN_SEARCH_QUESTIONS),  # the int8 export's search splits them in two
    )
    steps = schedule.max_steps if max_steps is None else max_steps
    if model is None:
        logger.info("demo 1/4: a 9M-parameter FLAN-T5-shaped model, random weights (none can be downloaded offline)")
        from edgeqa.finetune.models import build_random_t5

        model = str(build_random_t5(output / "base-model", initializer_factor=0.5, **DEMO_SHAPE))
    if data == "facts":
        splits = facts_data(output / "data", train_phrasings=train_phrasings)
        folder = output / "data"
        logger.info("demo 2/4: fine-tuning on %s (%s), %d steps", folder, ", ".join(DEMO_RELATIONS), steps)
    else:
        folder = _short_answer_split(output / "data", max_answer_chars=100, limit=1024)
        splits = {}
        logger.info("demo 2/4: fine-tuning on %s (Dolly open QA, short answers), %d steps", folder, steps)
    every = min(schedule.eval_steps, steps)
    run = finetune(
        FinetuneConfig(
            model=model,
            data=str(folder),
            output_dir=output / "run",
            epochs=1000,
            max_steps=steps,
            learning_rate=schedule.learning_rate,
            batch_size=schedule.batch_size,
            eval_batch_size=100,
            max_eval_samples=schedule.max_eval_samples,
            max_target_tokens=schedule.max_target_tokens,
            eval_max_new_tokens=schedule.parity_max_new_tokens,
            logging_steps=50,
            save_total_limit=1,
            overwrite=True,
        ),
        trainer_overrides=every_steps(every, "exact_match" if data == "facts" else "rougeL"),
        progress_bars=progress_bars,
    )
    logger.info("demo 3/4: exporting to int8 ONNX with the parity gate")
    artifact = output / "model-int8"
    exported = export_artifact(
        ExportConfig(
            checkpoint=str(run.final_dir),
            output=artifact,
            quantize=WeightType.INT8,
            parity_data=splits.get("validation"),
            parity_samples=schedule.parity_samples if parity_samples is None else parity_samples,
            parity_max_new_tokens=schedule.parity_max_new_tokens,
            force=True,
        )
    )
    logger.info("demo 4/4: answering with the CPU runtime (onnxruntime + tokenizers + numpy)")
    qa = QAModel.load(artifact)
    scores, counts = {}, {}
    for split in ("validation", "test") if splits else ():
        scores[split], counts[split] = _exact_match(qa, splits[split], schedule.parity_max_new_tokens)
    if data == "facts":
        asked = showcase()
    else:
        asked = [Answered(q, "") for q in DOLLY_QUESTIONS]
    answers = [Answered(a.question, qa.answer(a.question, max_new_tokens=32).text, a.expected, a.note) for a in asked]
    checkpoint_mb = sum(p.stat().st_size for p in run.final_dir.iterdir() if p.is_file()) / 1e6
    return DemoResult(
        output=output,
        artifact=artifact,
        data=data,
        answers=answers,
        parity_table=exported.parity.table() if exported.parity else "",
        artifact_mb=exported.manifest.total_bytes / 1e6,
        checkpoint_mb=checkpoint_mb,
        history=run.history,
        exact_match=scores,
        questions=counts,
    )


def every_steps(steps: int, metric: str) -> dict[str, Any]:
    """Trainer settings of a demo: evaluate and save every `steps` steps, the best checkpoint by `metric` kept."""
    return dict(
        eval_strategy="steps", eval_steps=steps, save_strategy="steps", save_steps=steps, metric_for_best_model=metric
    )


def _exact_match(qa: Any, path: Path, max_new_tokens: int) -> tuple[float, int]:
    """The artifact's exact match on (an evenly spaced sample of at most MAX_TEST_QUESTIONS of) a split."""
    from edgeqa.metrics import exact_match

    records = read_records(path)
    records = records[:: max(1, len(records) // MAX_TEST_QUESTIONS)][:MAX_TEST_QUESTIONS]
    answers = qa.answer_batch([r.question for r in records], batch_size=32, max_new_tokens=max_new_tokens)
    return exact_match([a.text for a in answers], [r.answer for r in records]), len(records)


def summary(result: DemoResult, trained_model: str | None = None, serve: bool = False) -> str:
    """What `edgeqa demo` prints on stdout: parity, exact match, answers and the next commands."""
    lines = ["Parity of the int8 artifact against the PyTorch model:", result.parity_table]
    if result.exact_match:
        parts = [
            f"{label} {result.exact_match[split] * 100:.1f}% of {result.questions[split]}"
            for split, label in (("validation", "held-out phrasing"), ("test", "never-seen templates"))
        ]
        lines.append("int8 artifact, exact answers: " + ", ".join(parts))
    lines.append("")
    width = max(len(a.question) for a in result.answers)
    for a in result.answers:
        if a.expected is None:
            lines += [f"Q: {a.question}", f"A: {a.answer}"]
        else:
            verdict = "right" if a.correct else f"wrong, expected {a.expected}"
            lines.append(f"  {a.question:<{width}}  -> {a.answer}  ({verdict}; {a.note})")
    artifact = result.artifact
    lines += [
        "",
        f"everything is in {result.output} (PyTorch checkpoint {result.checkpoint_mb:.1f} MB, "
        f"int8 artifact {result.artifact_mb:.1f} MB); next:",
        f'  edgeqa ask {artifact} "What is the capital of Italy?"',
        f"  edgeqa info {artifact}",
    ]
    if serve:
        lines.append(f"  edgeqa serve {artifact}")
    if trained_model is None:
        lines += [
            "  edgeqa finetune --model google/flan-t5-base --data qa.jsonl -o runs/qa   # the real run, on a GPU",
            "  edgeqa export runs/qa/final model-int8 --quantize",
        ]
    return "\n".join(lines)
