"""`edgeqa demo` end to end, offline, with fewer steps than the default."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgeqa.cli import app
from edgeqa.demo import SAMPLE_QUESTIONS
from edgeqa.manifest import Manifest


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--output", str(out), "--max-steps", "60", "--parity-samples", "24"])
    assert result.exit_code == 0, result.output
    manifest = Manifest.read(out / "model-int8")
    assert manifest.quantization and manifest.parity and manifest.parity.passed
    for text in ("| rougeL |", "mean latency ms", "identical answers", "gate (int8"):
        assert text in result.stdout
    for question in SAMPLE_QUESTIONS:
        line = result.stdout.split(f"Q: {question}\nA: ", 1)[1].split("\n", 1)[0]
        assert line.strip(), f"no answer printed for {question!r}"
    assert f"edgeqa ask {out / 'model-int8'}" in result.stdout
    assert "google/flan-t5-base" in result.stdout
    again = CliRunner().invoke(app, ["demo", "--output", str(out)])
    assert again.exit_code == 1 and "--force" in again.stderr
