"""Checkpoints that mean the same model under transformers 4.57 and 5.x: fine-tuned under 5.x,
exported under 4.57 (Optimum's); the tie check; `edgeqa export` where Optimum is missing or refuses.

The 5.x side runs in a second environment named by $EDGEQA_TRAIN_PYTHON (`make test-train` makes
.venv-train: torch CPU, edgeqa[train] on the newest transformers 5.x); this file runs in the main one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl
from edgeqa.errors import ExportError, MissingExtraError
from edgeqa.tied_weights import explicit_tie_setting, own_lm_head, tie_problem

TRAIN_PYTHON = "EDGEQA_TRAIN_PYTHON"

# The PyTorch reading of a checkpoint, run alike under each transformers: prompt ids, teacher-forced
# logits on the reference answers, greedy answers (edgeqa's parity reference).
READING = """
import json, sys
import numpy as np, torch, transformers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from edgeqa.export.parity import reference_answers
from edgeqa.prompt import format_prompt
checkpoint, records, out = sys.argv[1:]
rows = [json.loads(line) for line in open(records, encoding="utf-8")]
prompts = [format_prompt(r["question"]) for r in rows]
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint).eval()
batch = tokenizer(prompts, padding=True, return_tensors="pt")
labels = tokenizer(text_target=[r["answer"] for r in rows], padding=True, return_tensors="pt").input_ids
with torch.inference_mode():
    logits = model(**batch, labels=labels).logits.numpy()
answers = reference_answers(checkpoint, prompts, 512, 16, max_new_tokens=16)[0]
np.savez(out, ids=batch.input_ids.numpy(), logits=logits, tied=model.lm_head.weight is model.shared.weight)
print(json.dumps({"version": transformers.__version__, "answers": answers}))
"""

# The artifact's answers from the runtime (onnxruntime, tokenizers, numpy), run alike in each environment.
ANSWERING = """
import json, sys
import tokenizers
from edgeqa.runtime import QAModel
artifact, records = sys.argv[1:]
model = QAModel.load(artifact)
rows = [json.loads(line) for line in open(records, encoding="utf-8")]
answers = [model.answer(r["question"], max_new_tokens=16).tokens for r in rows]
print(json.dumps({"tokenizers": tokenizers.__version__, "answers": answers}))
"""


def _run(*args: str, timeout: int = 900, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def train_python() -> str:
    """The Python of the transformers-5 environment; it must hold a 5.x (pip did not downgrade it)."""
    made = Path(__file__).parents[1] / ".venv-train"  # what `make test-train` makes, for a plain `pytest`
    python = os.environ.get(TRAIN_PYTHON) or (str(made / "bin" / "python") if (made / ".installed").is_file() else "")
    if not python:
        message = (
            f"set {TRAIN_PYTHON} to the Python of an edgeqa[train] environment on transformers 5.x "
            "(`make test-train` makes .venv-train)"
        )
        if os.environ.get("CI"):  # CI runs the cross-version test; a skip there would hide that it did not
            pytest.fail(message)
        pytest.skip(message)
    assert Path(python).is_file(), f"{TRAIN_PYTHON}={python} does not exist"
    version = _run(python, "-c", "import transformers; print(transformers.__version__)").stdout.strip()
    assert version.split(".")[0] == "5", f"the train environment holds transformers {version}, not 5.x"
    return python


@pytest.fixture(scope="module")
def run5(train_python, tiny_model, memo_data, tmp_path_factory) -> Path:
    """`edgeqa finetune` under transformers 5.x on the tiny FLAN-T5-shaped model (saved by 4.57, as the
    hub's checkpoints were by older versions); returns the run folder. Its log is edgeqa's own."""
    out = tmp_path_factory.mktemp("run5") / "run"
    result = _run(
        train_python,
        "-m",
        "edgeqa.cli",
        "finetune",
        "--model",
        str(tiny_model),
        "--data",
        str(memo_data),
        "-o",
        str(out),
        "--epochs",
        "4",
        "--lr",
        "1.5e-2",
        "--eval-max-new-tokens",
        "8",
        "--device",
        "cpu",
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
    )
    lines = result.stderr.splitlines()
    foreign = [line for line in lines if not line.startswith(("data: ", "step ", "saved the best model"))]
    assert not foreign and len(lines) == 6, result.stderr  # data, 4 evaluations, saved
    return out


def _reading(python: str, checkpoint: Path, records: Path, out: Path) -> tuple[dict, dict]:
    import numpy as np

    result = _run(python, "-c", READING, str(checkpoint), str(records), str(out))
    arrays = np.load(out)
    return json.loads(result.stdout.strip().splitlines()[-1]), {k: arrays[k] for k in arrays.files}


@pytest.mark.slow
def test_fine_tuned_under_5_exports_under_4_57_as_the_same_model(train_python, run5, memo_data, tmp_path):
    import numpy as np

    from edgeqa.export import ExportConfig, export_artifact

    final = run5 / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["use_cache"] is True, config
    assert own_lm_head(final) and tie_problem(final) is None

    records = write_jsonl(
        tmp_path / "questions.jsonl", [json.loads(line) for line in open(memo_data / "train.jsonl")][:32]
    )
    (v5, arrays5), (v4, arrays4) = (
        _reading(python, final, records, tmp_path / f"{name}.npz")
        for name, python in (("v5", train_python), ("v4", sys.executable))
    )
    assert (v5["version"].split(".")[0], v4["version"][:4]) == ("5", "4.57")
    assert not arrays5["tied"] and not arrays4["tied"]  # FLAN-T5's own lm_head under both
    assert np.array_equal(arrays5["ids"], arrays4["ids"])  # tokenizer files read alike
    worst = float(np.abs(arrays5["logits"] - arrays4["logits"]).max())
    scale = float(np.abs(arrays4["logits"]).max())
    print(f"\nlogits 5.x vs 4.57: max |diff| {worst:.2e} (largest logit {scale:.1f})")
    assert worst <= 1e-5 * max(scale, 1.0)
    assert v5["answers"] == v4["answers"]

    # the gate's questions are the run's held-out ones (the same 32 as above): the ONNX answers equal 4.57's
    result = export_artifact(
        ExportConfig(checkpoint=str(final), output=tmp_path / "art", parity_samples=32, parity_max_new_tokens=16)
    )
    assert result.parity and result.parity.passed and result.parity.identical_answers == 1.0
    print(f"parity gate: {result.parity.samples} questions, {result.parity.identical_answers:.0%} identical answers")
    # the runtime in either environment (tokenizers 0.22 here, 0.23 beside transformers 5.x) gives 5.x's answers
    for python in (sys.executable, train_python):
        answering = _run(python, "-c", ANSWERING, str(tmp_path / "art"), str(records))
        answered = json.loads(answering.stdout.splitlines()[-1])
        assert answered["answers"] == v5["answers"]
        print(f"runtime with tokenizers {answered['tokenizers']}: answers equal transformers {v5['version']}'s")


@pytest.mark.slow
def test_export_under_5_without_optimum_prints_one_line_with_the_fix(train_python, run5, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = subprocess.run(
        [train_python, "-m", "edgeqa.cli", "export", str(run5 / "final"), str(tmp_path / "art")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: export runs on Optimum") and "transformers 5." in result.stderr
    assert "pip install torch==2.13.0 'edgeqa[export]'" in result.stderr and "--target export" in result.stderr
    assert not (tmp_path / "art").exists()


# ------------------------------------------------------------- the tie check (main environment only)


@pytest.fixture
def tied_by_mistake(tiny_model, tmp_path) -> Path:
    """The tiny FLAN-T5-shaped model as plain transformers 5 saves it: its own lm_head, config saying tied."""
    folder = shutil.copytree(tiny_model, tmp_path / "tied-by-mistake")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps(config | {"tie_word_embeddings": True, "scale_decoder_outputs": False})
    )
    return folder


def test_export_refuses_a_checkpoint_tied_by_mistake(tied_by_mistake, tmp_path):
    pytest.importorskip("optimum")
    from typer.testing import CliRunner

    from edgeqa.cli import app
    from edgeqa.export import ExportConfig, export_artifact

    with pytest.raises(ExportError, match=r"tie_word_embeddings is true, but the checkpoint's lm_head.weight differs"):
        export_artifact(ExportConfig(checkpoint=str(tied_by_mistake), output=tmp_path / "art"))
    result = CliRunner().invoke(app, ["export", str(tied_by_mistake), str(tmp_path / "art")])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert '"tie_word_embeddings": false' in result.stderr and "nothing exported" in result.stderr
    assert not (tmp_path / "art").exists()


def _safetensors(folder: Path, tensors: dict, config: dict | None = None, shards: int = 1) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
    else:
        weight_map = {}
        for index in range(shards):
            part = {n: tensors[n] for n in names[index::shards]}
            save_file(part, str(folder / f"model-{index}.safetensors"))
            weight_map |= dict.fromkeys(part, f"model-{index}.safetensors")
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "t5"} | (config or {})))
    return folder


@pytest.mark.parametrize("shards", [1, 2])
def test_the_tie_check_reads_the_weights_as_stored(tmp_path, shards):
    import numpy as np

    embedding = np.arange(12, dtype=np.float32).reshape(4, 3)
    own = _safetensors(tmp_path / "own", {"shared.weight": embedding, "lm_head.weight": embedding + 1}, shards=shards)
    copy = _safetensors(
        tmp_path / "copy", {"shared.weight": embedding, "lm_head.weight": embedding.copy()}, shards=shards
    )
    tied = _safetensors(tmp_path / "tied", {"shared.weight": embedding}, {"tie_word_embeddings": False})
    assert (own_lm_head(own), own_lm_head(copy), own_lm_head(tied)) == (True, False, False)
    assert "differs from its embedding" in (tie_problem(own) or "")  # no setting: transformers 4.x ties
    assert "hold no lm_head.weight" in (tie_problem(tied) or "")
    assert tie_problem(copy) is None
    assert explicit_tie_setting(own) is False and tie_problem(own) is None
    assert json.loads((own / "config.json").read_text())["tie_word_embeddings"] is False
    scaled = _safetensors(tmp_path / "scaled", {"shared.weight": embedding}, {"scale_decoder_outputs": False})
    assert "4.x would scale the outputs and 5.x would not" in (tie_problem(scaled) or "")
    assert own_lm_head(tmp_path) is None  # no safetensors: not read


# ------------------------------------------------------------- Optimum missing or refusing


def test_exporter_check_names_the_second_environment(monkeypatch):
    from edgeqa.export import optimum_check

    installed = {"transformers": "5.25.0", "optimum-onnx": "0.1.0"}
    monkeypatch.setattr(optimum_check, "_installed", installed.get)
    monkeypatch.setattr(optimum_check, "transformers_ranges", lambda: [("optimum-onnx 0.1.0", "<4.58.0,>=4.36")])
    with pytest.raises(MissingExtraError) as refused:
        optimum_check.check_exporter()
    message = str(refused.value)
    assert (
        "optimum-onnx 0.1.0 requires transformers<4.58.0,>=4.36, but this environment has transformers 5.25.0"
        in message
    )
    assert "would replace it" in message and "docs/environments.md" in message and "\n" not in message

    monkeypatch.setattr(optimum_check, "transformers_ranges", lambda: [])
    del installed["optimum-onnx"]
    with pytest.raises(
        MissingExtraError, match=r"optimum-onnx\), which is not installed here, next to transformers 5.25.0"
    ):
        optimum_check.check_exporter()

    installed["optimum-onnx"] = "0.2.0"  # a release that allows 5.x, but fails to import

    def broken(name: str):
        raise ImportError("cannot import name '_CAN_RECORD_REGISTRY' from 'transformers.utils'\nmore")

    monkeypatch.setattr(optimum_check.importlib, "import_module", broken)
    with pytest.raises(
        MissingExtraError,
        match=r"^Optimum cannot be imported next to transformers 5.25.0 \(ImportError: "
        r"cannot import name '_CAN_RECORD_REGISTRY' from 'transformers.utils'\); export from",
    ):
        optimum_check.check_exporter()


def test_exporter_check_passes_on_optimums_stack():
    pytest.importorskip("optimum.exporters.onnx")
    from edgeqa.export.optimum_check import check_exporter, transformers_ranges

    check_exporter()
    assert any(who == "edgeqa[export]" for who, _ in transformers_ranges())
