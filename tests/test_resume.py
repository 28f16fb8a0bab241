"""`edgeqa finetune --resume`: the run's own settings, changes that would not hold refused, the best checkpoint
found again after the run folder moved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from edgeqa.cli import app
from edgeqa.errors import ConfigError
from edgeqa.finetune import FinetuneConfig

pytest.importorskip("torch")
pytest.importorskip("datasets")

runner = CliRunner()
# 16 records in batches of 4: 4 steps an epoch, a checkpoint each epoch; 4 records validated with 4 new tokens
SHORT = ["--batch-size", "4", "--max-train-samples", "16", "--max-eval-samples", "4", "--eval-max-new-tokens", "4"]


def finetune(*args: str) -> Result:
    return runner.invoke(app, ["finetune", *args])


def every_flag(model: Path, data: Path, out: Path | str, epochs: int = 2) -> list[str]:
    """A run's options, as a run from before edgeqa saved its settings is resumed."""
    return ["--model", str(model), "--data", str(data), "-o", str(out), "--epochs", str(epochs), *SHORT]


def first_run(model: Path, data: Path, out: Path | str, epochs: int = 2) -> None:
    """A finished run; its ROUGE-L stays 0, so the first checkpoint (step 4) is the best one."""
    result = finetune(*every_flag(model, data, out, epochs))
    assert result.exit_code == 0, result.output
    assert f"final model: {out}/final (step 4 of {4 * epochs})" in result.stdout


def state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def saved_step(run: Path) -> int:
    return json.loads((run / "final" / "edgeqa_config.json").read_text())["global_step"]


def test_resume_alone_continues_with_the_runs_own_settings(tmp_path, tiny_model, memo_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first_run(tiny_model, memo_data, "run")
    saved = json.loads((tmp_path / "run" / "edgeqa_run.json").read_text())
    assert (saved["model"], saved["data"], saved["batch_size"]) == (str(tiny_model), str(memo_data), 4)
    shutil.rmtree(tmp_path / "run" / "checkpoint-8")  # interrupted after the first epoch
    shutil.rmtree(tmp_path / "run" / "final")

    resumed = finetune("-o", "run", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from run/checkpoint-4" in resumed.stderr
    assert "final model: run/final (step 4 of 8)" in resumed.stdout  # 2 epochs of 4 steps, as saved
    record = json.loads((tmp_path / "run" / "final" / "edgeqa_config.json").read_text())["config"]
    assert (record["model"], record["data"], record["batch_size"], record["resume"]) == (
        str(tiny_model),
        str(memo_data),
        4,
        True,
    )

    more = finetune("-o", "run", "--resume", "--epochs", "3")  # training on is what resuming is for
    assert more.exit_code == 0, more.output
    assert "(step 4 of 12)" in more.stdout
    assert [e["step"] for e in json.loads((tmp_path / "run" / "metrics.json").read_text())] == [4, 8, 12]

    # the saved settings are a run's file: --overwrite replaces the run
    args = ["--model", str(tiny_model), "--data", str(memo_data), "-o", "run", *SHORT]
    again = finetune(*args, "--overwrite", "--max-steps", "1")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint-1",
        "edgeqa_run.json",
        "final",
        "metrics.json",
    ]


def test_changed_training_settings_are_refused_in_one_line(tmp_path, tiny_model, memo_data):
    out = tmp_path / "run"
    first_run(tiny_model, memo_data, out, epochs=1)
    before = sorted(p.name for p in out.iterdir())

    # every option given again (the last of two flags counts), so that only the changed ones are tested
    options = every_flag(tiny_model, memo_data, out, epochs=2)
    refused = finetune(*options, "--resume", "--batch-size", "2", "--seed", "7")
    assert refused.exit_code == 1, refused.output
    assert refused.stderr.count("\n") == 1, refused.stderr
    message = refused.stderr
    assert f"error: --resume: {out} was trained with other settings: --seed 42 (now 7), --batch-size 4 (now 2);" in (
        message
    )
    assert "--epochs" not in message and "another --output, or --overwrite" in message
    assert sorted(p.name for p in out.iterdir()) == before  # nothing trained

    refused = finetune(*options, "--resume", "--data", str(tmp_path), "--max-target-tokens", "8")
    assert refused.exit_code == 1
    assert f"--data {str(memo_data)!r} (now {str(tmp_path)!r}), --max-target-tokens 512 (now 8)" in refused.stderr

    from edgeqa.finetune import finetune as library_finetune

    settings = dict(model=str(tiny_model), data=str(memo_data), output_dir=out, resume=True, batch_size=4)
    settings |= dict(max_train_samples=16, max_eval_samples=4, learning_rate=1e-3)
    with pytest.raises(ConfigError, match=r"--learning-rate 0.0003 \(now 0.001\); "):  # the library checks too
        library_finetune(FinetuneConfig(**settings))


def test_a_moved_run_saves_its_own_best_checkpoint(tmp_path, tiny_model, memo_data, monkeypatch):
    """Killed while final/ was saved, then copied or moved: final/ is the best checkpoint of the run resumed."""
    monkeypatch.chdir(tmp_path)
    first_run(tiny_model, memo_data, "run")
    shutil.rmtree(tmp_path / "run" / "final")
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    assert state(tmp_path / "copy" / "checkpoint-8")["best_model_checkpoint"] == "run/checkpoint-4"
    # the first run's best checkpoint, still where the copy's state points, now holds other weights
    shutil.copy(tiny_model / "model.safetensors", tmp_path / "run" / "checkpoint-4" / "model.safetensors")
    best = (tmp_path / "copy" / "checkpoint-4" / "model.safetensors").read_bytes()
    assert best != (tmp_path / "run" / "checkpoint-4" / "model.safetensors").read_bytes()

    resumed = finetune(*every_flag(tiny_model, memo_data, "copy"), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert (tmp_path / "copy" / "final" / "model.safetensors").read_bytes() == best
    assert "best checkpoint: copy/checkpoint-4; final model: copy/final (step 4 of 8)" in resumed.stdout
    assert saved_step(tmp_path / "copy") == 4
    assert state(tmp_path / "copy" / "checkpoint-8")["best_model_checkpoint"] == "copy/checkpoint-4"

    # moved, and resumed from another working folder, where the state's path leads nowhere
    shutil.rmtree(tmp_path / "copy" / "final")
    (tmp_path / "copy").rename(tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = finetune(*every_flag(tiny_model, memo_data, "../moved"), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "(step 4 of 8)" in resumed.stdout and "warning" not in resumed.stderr
    assert (tmp_path / "moved" / "final" / "model.safetensors").read_bytes() == best
    assert saved_step(tmp_path / "moved") == 4


def test_the_command_line_builds_on_the_saved_settings_and_a_config_file_counts_as_given(tmp_path):
    from edgeqa.finetune.resume import command_config

    out = tmp_path / "run"
    out.mkdir()
    # a run from before edgeqa saved its settings: the defaults, as before
    assert command_config(None, {"output_dir": out, "resume": True}).data == "yahoo_answers_qa"
    saved = FinetuneConfig(model=str(tmp_path), data="qa.jsonl", output_dir=Path("elsewhere"), seed=5, batch_size=4)
    (out / "edgeqa_run.json").write_text(json.dumps({k: v for k, v in saved.to_dict().items() if k != "output_dir"}))
    (tmp_path / "run.toml").write_text("seed = 3\nepochs = 1.0\n")
    config = command_config(tmp_path / "run.toml", {"output_dir": out, "resume": True, "epochs": 5.0})
    assert (config.model, config.data, config.batch_size) == (str(tmp_path), "qa.jsonl", 4)
    assert (config.seed, config.epochs, config.output_dir, config.resume) == (3, 5.0, out, True)
    assert command_config(None, {"output_dir": out}).data == "yahoo_answers_qa"  # a new run: no saved settings

    (out / "edgeqa_run.json").write_text('{"modle": "x"}')
    with pytest.raises(ConfigError, match="edgeqa_run.json hold unknown key.s. modle; resume it with the edgeqa"):
        command_config(None, {"output_dir": out, "resume": True})
