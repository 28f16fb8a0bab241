"""Shared fixtures: tiny FLAN-T5-shaped models built from a T5Config, trained and exported once.

Nothing here touches the network: the tokenizer and the data are the bundled ones.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's compiled-kernel cache and its extensions folder (where DeepSpeed builds its CPU op), one
# each per test session (its processes share them), removed when it ends (about 90 MB a run). The
# machine-wide ones outlive a killed run: /tmp/torchinductor_<user> keeps a kernel cut off mid-write
# ("main.so: file too short" in every later run), and ~/.cache/torch_extensions a build's lock file,
# on which every later ZeRO-3 run waits for ever (seen here after a CI run was stopped).
for variable, prefix in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TORCH_EXTENSIONS_DIR", "extensions")):
    if variable not in os.environ:
        os.environ[variable] = tempfile.mkdtemp(prefix=f"edgeqa-tests-{prefix}-")
        atexit.register(shutil.rmtree, os.environ[variable], ignore_errors=True)

from edgeqa.bench.outliers import FACTS_RELATIONS, train_facts_model, write_facts_data  # noqa: E402, F401
from edgeqa.demo import DEMO_SHAPE  # noqa: E402
from edgeqa.prompt import DEFAULT_MAX_INPUT_TOKENS, format_prompt  # noqa: E402
from edgeqa.records import sample_data  # noqa: E402

# transformers' T5ModelTester sizes, with FLAN-T5's vocabulary and feed-forward.
TINY = dict(
    d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8
)
# The facts fixture: the demo's model shape (a narrower one, d_model 64, learnt next to nothing in
# 600 steps), trained for FACTS_STEPS steps (about a minute on 2 cores) on FACTS_RELATIONS.
FACTS_SHAPE = DEMO_SHAPE
# google/flan-t5-small's public config (d_kv 64 != d_model / heads).
SMALL = dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6)


def build_t5(folder: Path, seed: int = 0, **sizes: float) -> Path:
    """Save a seeded, randomly initialised FLAN-T5-shaped model with the bundled tokenizer."""
    pytest.importorskip("torch")
    from edgeqa.finetune.models import build_random_t5

    return build_random_t5(folder, seed=seed, **sizes)


def another_tokenizer(source: Path, target: Path) -> Path:
    """A copy of tokenizer.json `source` that splits text otherwise (one piece's score changed): another
    tokenizer to an index's fingerprint, where a re-saved copy of the same one is not."""
    data = json.loads(Path(source).read_text(encoding="utf-8"))
    data["model"]["vocab"][100][1] -= 1.0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data), encoding="utf-8")
    return target


def short_records(count: int, max_chars: int = 60) -> list[dict]:
    rows = [json.loads(line) for line in sample_data("train").read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if len(r["answer"]) <= max_chars][:count]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_t5(tmp_path_factory.mktemp("tiny"), **TINY)


@pytest.fixture(scope="session")
def memo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 short-answer training records, as both train and validation split (a memorisation task)."""
    folder = tmp_path_factory.mktemp("memo-data")
    rows = short_records(64)
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "validation.jsonl", rows)
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, memo_data: Path) -> Path:
    """A tiny model fine-tuned with `edgeqa.finetune` for 96 steps on `memo_data`; returns the run folder
    (the fine-tuning tests' run: metrics per epoch, the saved training record)."""
    from edgeqa.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("run") / "run"
    finetune(
        FinetuneConfig(
            model=str(tiny_model),
            data=str(memo_data),
            output_dir=out,
            epochs=12,
            learning_rate=1.5e-2,
            eval_max_new_tokens=16,
            logging_steps=50,
            device="cpu",
        )
    )
    return out


@pytest.fixture(scope="session")
def facts_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Questions about FACTS_RELATIONS from `edgeqa.facts`: train.jsonl, validation.jsonl (a phrasing
    never trained on) and test.jsonl (templates never trained on)."""
    return write_facts_data(tmp_path_factory.mktemp("facts-data"))


@pytest.fixture(scope="session")
def facts_run(tmp_path_factory: pytest.TempPathFactory, facts_data: Path) -> Path:
    """A FACTS_SHAPE model fine-tuned on `facts_data` with `edgeqa.finetune`; returns the run folder."""
    pytest.importorskip("torch")
    return train_facts_model(tmp_path_factory.mktemp("facts-run") / "run", facts_data)


@pytest.fixture(scope="session")
def facts_model(facts_run: Path) -> Path:
    """Checkpoint folder of a model that knows the capitals and continents of the bundled countries."""
    return facts_run / "final"


def _export(checkpoint: Path, output: Path, **options) -> Path:
    from edgeqa.export import ExportConfig, export_artifact

    # export's default 200 questions, 100 per half of the gate: with 48 per half, one answer flipped either
    # way is 2.1 points and fails the 1-point bound, and the facts model has near-ties that int8 can tip
    export_artifact(
        ExportConfig(checkpoint=str(checkpoint), output=output, parity_samples=200, parity_max_new_tokens=16, **options)
    )
    return output


@pytest.fixture(scope="session")
def facts_artifact_fp32(tmp_path_factory: pytest.TempPathFactory, facts_model: Path) -> Path:
    """`facts_model` exported to float graphs through the parity gate (on its held-out phrasing)."""
    return _export(facts_model, tmp_path_factory.mktemp("facts-art") / "fp32")


@pytest.fixture(scope="session")
def facts_artifact_int8(tmp_path_factory: pytest.TempPathFactory, facts_model: Path) -> Path:
    """`facts_model` exported to int8 through the parity gate (on its held-out phrasing)."""
    return _export(facts_model, tmp_path_factory.mktemp("facts-art") / "int8", quantize="int8")


# Every test that needs a trained model uses the facts model: it knows something, so its answers
# (and any damage to them) mean something.
@pytest.fixture(scope="session")
def trained_model(facts_model: Path) -> Path:
    return facts_model


@pytest.fixture(scope="session")
def artifact_fp32(facts_artifact_fp32: Path) -> Path:
    return facts_artifact_fp32


@pytest.fixture(scope="session")
def artifact_int8(facts_artifact_int8: Path) -> Path:
    return facts_artifact_int8


@pytest.fixture(scope="session")
def artifact_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The untrained tiny model exported without the parity gate: seconds, for tests of the loader."""
    return _export(tiny_model, tmp_path_factory.mktemp("art") / "tiny", parity=False)


@pytest.fixture(scope="session")
def questions() -> list[str]:
    """Validation questions of varied length (a few long ones are truncated)."""
    rows = [json.loads(line) for line in sample_data("validation").read_text(encoding="utf-8").splitlines()]
    picked = [r["question"] for r in rows[:96]]
    return picked + [" ".join(r["question"] for r in rows[i : i + 12]) for i in range(0, 48, 12)]


def hf_generate(checkpoint: Path, questions: list[str], batch_size: int, **options) -> list[list[int]]:
    """transformers' `generate` on the same prompts: answer ids, end-of-answer included."""
    from edgeqa.export.parity import reference_answers

    prompts = [format_prompt(q) for q in questions]
    return reference_answers(checkpoint, prompts, DEFAULT_MAX_INPUT_TOKENS, batch_size, **options)[0]
