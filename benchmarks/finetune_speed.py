"""Fine-tuning throughput: the original tutorial's recipe, edgeqa's, and the opt-in speed settings.

The tutorial trained in fp32 with plain batches; edgeqa trains in bf16 where the GPU supports it,
with TF32 matrix products and prompt-length-grouped batches, and does not wait for the GPU after
every step to check the loss for NaN. The opt-in settings go further (answer-length batches,
padding to multiples, batches of 32 and 64 with the learning rate scaled, a per-epoch validation
subset, torch.compile). Each setting fine-tunes the same seeded FLAN-T5-shaped model on the bundled
sample, after one untimed warm-up run that pays the first-run costs (kernels, imports, data cache).

`--ladder short` (the default): the tutorial's recipe, edgeqa's defaults, then the opt-in settings
cumulatively, torch.compile left out. `--ladder full`: from the tutorial's recipe to edgeqa's
defaults one change at a time, then the opt-in settings, torch.compile last.

By default each setting trains the same number of epochs (equal samples, whatever the batch) and
evaluates ROUGE each epoch, as `edgeqa finetune` does. Reported per setting (`finetune_speed_report`):
- end-to-end samples/s: samples trained over `Trainer.train`'s wall time (training, every
  evaluation, the checkpoints), against the tutorial's recipe and against edgeqa's defaults;
- ROUGE-L and exact match of the kept checkpoint on every validation record, scored apart;
- training samples/s: the steps after a warm-up, the evaluations between epochs left out;
- the share of padding in the training batches (the same on any device) and peak GPU memory.
A setting that runs end to end at least `--min-speedup` times edgeqa's defaults with ROUGE-L no more
than `--rouge-tolerance` points below the tutorial's is marked a candidate default.
`--steps N` instead trains N steps per setting (training throughput; equal steps, not samples).

    python -m edgeqa.bench.finetune_speed --shape base --output results/
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers

from edgeqa.bench.finetune_gauges import PaddingGauge, StepClock
from edgeqa.bench.finetune_speed_report import device_name, markdown
from edgeqa.errors import ConfigError
from edgeqa.finetune import FinetuneConfig, finetune
from edgeqa.finetune.models import FLAN_T5_SHAPES, build_random_t5
from edgeqa.logs import setup_logging
from edgeqa.records import BUNDLED_QA

# transformers' default: check each step's loss for NaN/inf, which waits for the GPU every step.
SYNC = {"logging_nan_inf_filter": True}
# A setting: (name, FinetuneConfig fields, Seq2SeqTrainingArguments set over edgeqa's choices).
# No fields and no trainer arguments: edgeqa's defaults.
Setting = tuple[str, dict[str, Any], dict[str, Any]]
TUTORIAL: Setting = ("tutorial recipe: fp32, no TF32, plain batches", {"recipe": "tutorial"}, {})
# From the original tutorial's recipe to edgeqa's defaults, one change at a time (measured on an H100).
LADDER: list[Setting] = [
    TUTORIAL,
    ("+ TF32", {"precision": "fp32", "length_grouping": "none"}, SYNC),
    ("+ prompt-length batches", {"precision": "fp32"}, SYNC),
    ("+ bf16", {}, SYNC),
    ("+ no per-step loss check = edgeqa defaults", {}, {}),
]
DEFAULTS: Setting = ("edgeqa defaults: bf16, TF32, prompt-length batches, no per-step loss check", {}, {})
# edgeqa's opt-in speed settings on top of its defaults, cumulative.
ANSWER = {"length_grouping": "answer"}
PADDED = ANSWER | {"pad_to_multiple_of": 32}
BATCH_32 = PADDED | {"batch_size": 32, "lr_scaling": "sqrt"}
BATCH_64 = PADDED | {"batch_size": 64, "lr_scaling": "sqrt"}
EVAL_SUBSET = BATCH_64 | {"eval_subset": 8, "eval_batch_size": 64}
OPT_IN: list[Setting] = [
    ("+ answer-length batches", ANSWER, {}),
    ("+ padding to multiples of 32", PADDED, {}),
    ("+ batch 32, lr x2 (sqrt scaling)", BATCH_32, {}),
    ("+ batch 64, lr x2.8 (sqrt scaling)", BATCH_64, {}),
    ("+ validation subset of 8 each epoch, eval batch 64", EVAL_SUBSET, {}),
]
# Its first step compiled for 120 s on an H100 (training only), and each new shape compiles again.
COMPILE: Setting = ("+ torch.compile", EVAL_SUBSET | {"torch_compile": True}, {})
LADDERS: dict[str, list[Setting]] = {
    "short": [TUTORIAL, DEFAULTS, *OPT_IN],
    "full": [*LADDER, *OPT_IN, COMPILE],
}
SCORE_BATCH = 64  # the batch the kept checkpoint is scored in, the same for every setting


@dataclass(frozen=True)
class SpeedResult:
    setting: str
    edgeqa_defaults: bool
    batch_size: int
    samples: int  # trained, in all
    end_to_end_seconds: float  # Trainer.train (training, every evaluation, checkpoints) + a final full evaluation
    other_seconds: float  # the rest of the run: loading, data preparation, the final save
    samples_per_second: float  # training only: the steps after the warm-up, evaluations left out
    timed_steps: int
    seconds: float
    eval_seconds: float
    rouge_l: float | None  # the kept checkpoint on every validation record, in points
    exact_match: float | None
    answer_padding: float
    prompt_padding: float
    peak_memory_gib: float
    last_loss: float | None

    @property
    def end_to_end_samples_per_second(self) -> float:
        return self.samples / self.end_to_end_seconds


Validation = tuple[list[str], list[str]]  # prompts, reference answers


def validation_records(config: FinetuneConfig) -> Validation:
    """Every validation record of `config`'s data (whatever `max_eval_samples`), as prompts and answers."""
    from edgeqa.finetune.data import load_raw, prepare_splits, prompts

    every = replace(config, max_eval_samples=None)
    _, validation = prepare_splits(load_raw(every), every)
    return prompts(validation[:], every), validation[every.answer_column]


def score_kept_model(
    final_dir: Path, config: FinetuneConfig, validation: Validation | None = None, batch_size: int = SCORE_BATCH
) -> tuple[float, float]:
    """ROUGE-L and exact match (in points) of a saved checkpoint on every validation record of `config`'s
    data (`validation`, when read already), generating as the per-epoch evaluation does, in float32 on the
    GPU where there is one."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from edgeqa.finetune.train import evaluation_generation
    from edgeqa.metrics import exact_match, rouge

    texts, references = validation or validation_records(config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSeq2SeqLM.from_pretrained(final_dir).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(final_dir)
    generation = evaluation_generation(model, config)
    answers: list[str] = []
    with torch.inference_mode():
        for first in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[first : first + batch_size],
                max_length=config.max_source_tokens,
                truncation=True,
                padding=True,
                return_tensors="pt",
            ).to(device)
            output = model.generate(**batch, generation_config=generation)
            answers += tokenizer.batch_decode(output, skip_special_tokens=True)
    return rouge(answers, references)["rougeL"] * 100, exact_match(answers, references) * 100


def measure(setting: Setting, config: FinetuneConfig, warmup_steps: int, validation: Validation) -> SpeedResult:
    """Fine-tune with one setting, time it, and score the checkpoint it keeps."""
    name, fields, overrides = setting
    clock, padding = StepClock(warmup_steps), PaddingGauge()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    result = finetune(config, callbacks=[clock, padding], trainer_overrides=overrides)
    whole = time.perf_counter() - began
    if clock.start is None or clock.steps == 0:
        raise SystemExit(f"{name}: fewer than {warmup_steps + 1} steps ran; raise --steps or --epochs")
    final_evaluation = sum(e.get("eval_runtime", 0.0) for e in result.history if e.get("validation") == "full")
    end_to_end = clock.train_ended - clock.train_began + final_evaluation
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    rouge_l, exact = score_kept_model(result.final_dir, config, validation)
    accumulation = overrides.get("gradient_accumulation_steps", 1)
    return SpeedResult(
        setting=name,
        edgeqa_defaults=not fields and not overrides,
        batch_size=config.batch_size,
        samples=result.global_step * config.batch_size * accumulation,
        end_to_end_seconds=end_to_end,
        other_seconds=whole - end_to_end,
        samples_per_second=config.batch_size * accumulation * clock.steps / clock.seconds,
        timed_steps=clock.steps,
        seconds=clock.seconds,
        eval_seconds=sum(entry.get("eval_runtime", 0.0) for entry in result.history),
        rouge_l=rouge_l,
        exact_match=exact,
        answer_padding=padding.answer,
        prompt_padding=padding.prompt,
        peak_memory_gib=peak,
        last_loss=clock.last_loss,
    )


def run(
    shape: str,
    output: Path,
    epochs: float = 2.0,
    steps: int | None = None,
    warmup_steps: int = 20,
    model: Path | None = None,
    settings: Sequence[Setting] | None = None,
    train_samples: int | None = 768,
    eval_samples: int = 64,
    eval_max_new_tokens: int = 64,
    min_speedup: float = 1.3,
    rouge_tolerance: float = 1.0,
) -> list[SpeedResult]:
    """Fine-tune with each setting in turn (default: the short ladder); rewrite `finetune-speed.{md,json}` after each.

    `epochs` per setting, or `steps` when given; `train_samples` and `eval_samples` cap the bundled
    sample's splits for training and the per-epoch evaluations (None: all of it).
    """
    output.mkdir(parents=True, exist_ok=True)
    name = f"a {shape}-shaped FLAN-T5" if model is None else str(model)
    plan = f"{steps} steps" if steps else f"{epochs:g} epochs of {train_samples or 'all'} samples"
    plan += f", {eval_samples} validation answers of up to {eval_max_new_tokens} tokens each epoch"
    with tempfile.TemporaryDirectory(prefix="edgeqa-finetune-speed-") as tmp:
        checkpoint = model or build_random_t5(Path(tmp) / "model", **FLAN_T5_SHAPES[shape])
        config = FinetuneConfig(
            model=str(checkpoint),
            data=str(BUNDLED_QA),
            epochs=epochs,
            max_steps=steps,
            max_train_samples=train_samples,
            max_eval_samples=eval_samples,
            eval_max_new_tokens=eval_max_new_tokens,
            logging_steps=max(1, (steps or 100) // 10),
            save_total_limit=1,
        )
        # Untimed: the first run in a process pays for kernels, imports and the data cache.
        finetune(replace(config, output_dir=Path(tmp) / "warm-up", max_steps=2, max_eval_samples=4))
        validation = validation_records(config)  # the same records score every setting
        results: list[SpeedResult] = []
        for number, setting in enumerate(settings or LADDERS["short"]):
            run_config = replace(config, output_dir=Path(tmp) / f"run-{number}", **setting[1])
            results.append(measure(setting, run_config, warmup_steps, validation))
            shutil.rmtree(run_config.output_dir)  # a base model's checkpoints are gigabytes each
            report = markdown(results, name, plan, min_speedup, rouge_tolerance)
            (output / "finetune-speed.md").write_text(report, encoding="utf-8")
            record = {
                "device": device_name(),
                "model": name,
                "plan": plan,
                "steps": steps,
                "epochs": None if steps else epochs,
                "results": [
                    asdict(r) | {"end_to_end_samples_per_second": r.end_to_end_samples_per_second} for r in results
                ],
            }
            (output / "finetune-speed.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            print(f"{setting[0]}: {results[-1].end_to_end_samples_per_second:.1f} samples/s end to end", flush=True)
    print(report)
    return results


def parse_setting(text: str) -> Setting:
    """`NAME|CONFIG_JSON[|TRAINER_JSON]`: FinetuneConfig fields, then Seq2SeqTrainingArguments overrides.

    e.g. `answer batches|{"length_grouping": "answer"}` or `no pin|{}|{"dataloader_pin_memory": false}`.
    """
    try:
        name, fields, *overrides = text.split("|", 2)
        parsed = json.loads(fields), json.loads(overrides[0]) if overrides else {}
        FinetuneConfig(**parsed[0])
    except (ValueError, TypeError, ConfigError) as e:
        raise argparse.ArgumentTypeError(f"expected NAME|CONFIG_JSON[|TRAINER_JSON] ({e}), got {text!r}") from e
    return name, *parsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(FLAN_T5_SHAPES), default="base", help="random FLAN-T5 shape")
    parser.add_argument("--model", type=Path, help="fine-tune this checkpoint folder instead of a random shape")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs per setting (equal samples)")
    parser.add_argument("--steps", type=int, help="optimizer steps per setting instead of --epochs")
    parser.add_argument("--warmup-steps", type=int, default=20, help="steps left out of the training timing")
    parser.add_argument("--train-samples", type=int, default=768, help="training records used (0: all 2,998)")
    parser.add_argument("--eval-samples", type=int, default=64, help="validation records evaluated")
    parser.add_argument("--eval-max-new-tokens", type=int, default=64, help="answer tokens generated in evaluation")
    parser.add_argument("--min-speedup", type=float, default=1.3, help="over edgeqa's defaults, for a candidate")
    parser.add_argument("--rouge-tolerance", type=float, default=1.0, help="ROUGE-L points a candidate may lose")
    parser.add_argument("--output", type=Path, default=Path("bench-results"), help="results folder")
    parser.add_argument("--ladder", choices=sorted(LADDERS), default="short", help="which settings (see above)")
    parser.add_argument(
        "--setting",
        type=parse_setting,
        action="append",
        help="measure these instead of a ladder: NAME|CONFIG_JSON[|TRAINER_JSON] (repeatable)",
    )
    args = parser.parse_args(argv)
    setup_logging(libraries=True)  # edgeqa's log: one line per evaluation, library noise filtered
    transformers.utils.logging.disable_progress_bar()  # the random model's "Writing model shards"
    run(
        args.shape,
        args.output,
        epochs=args.epochs,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        model=args.model,
        settings=args.setting or LADDERS[args.ladder],
        train_samples=args.train_samples or None,
        eval_samples=args.eval_samples,
        eval_max_new_tokens=args.eval_max_new_tokens,
        min_speedup=args.min_speedup,
        rouge_tolerance=args.rouge_tolerance,
    )


if __name__ == "__main__":
    main()
