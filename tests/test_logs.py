"""The CLI's log: edgeqa's lines pass, third-party noise is dropped, other third-party warnings become one line."""

from __future__ import annotations

import logging
import re
import warnings

import pytest

from edgeqa.logs import setup_logging, third_party_line


def record(name: str, message: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "transformers.trainer",
            "There were missing keys in the checkpoint model loaded: "
            "['encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'].",
        ),
        ("transformers.modeling_utils", "`torch_dtype` is deprecated! Use `dtype` instead!"),
        (
            "py.warnings",
            "/x/modeling_t5.py:1271: TracerWarning: Converting a tensor to a Python boolean might cause the trace\n"
            "  if sequence_length != 1:\n",
        ),
        ("py.warnings", "/x/y.py:3: FutureWarning: `foo` will be removed\n  foo()\n"),
        # transformers 5, when checkpoints are saved within a second (it broke the cross-version test's log)
        ("transformers.trainer", "mtime may not be reliable on this filesystem, falling back to numerical ordering"),
        # transformers 4.57 says it as a Python warning
        (
            "py.warnings",
            "/x/trainer.py:9: UserWarning: mtime may not be reliable on this filesystem, falling back "
            "to numerical ordering\n  warnings.warn(\n",
        ),
    ],
)
def test_known_noise_is_dropped(name, message):
    assert third_party_line(record(name, message)) is None


def test_third_party_info_is_dropped():
    assert third_party_line(record("datasets.builder", "Generating train split", logging.INFO)) is None


def test_missing_weights_that_are_not_tied_are_named_in_one_line():
    message = "There were missing keys in the checkpoint model loaded: ['encoder.embed_tokens.weight', 'lm_head.bias']."
    line = third_party_line(record("transformers.trainer", message))
    assert line == "warning: the checkpoint lacks weights: lm_head.bias"


def test_other_third_party_warnings_become_one_line():
    assert third_party_line(record("optimum.exporters.onnx", "Something odd\nwith details")) == (
        "warning: optimum: Something odd"
    )
    assert third_party_line(record("py.warnings", "/a.py:2: UserWarning: odd input\n  call()\n")) == (
        "warning: UserWarning: odd input"
    )
    assert third_party_line(record("transformers", "Broken", logging.ERROR)) == "error: transformers: Broken"


def _emit(capsys, verbose: bool) -> str:
    setup_logging(verbose=verbose, libraries=True)
    try:
        logging.getLogger("edgeqa.demo").info("demo 1/4: building")
        logging.getLogger("transformers.trainer").warning(
            "There were missing keys in the checkpoint model loaded: ['decoder.embed_tokens.weight']."
        )
        logging.getLogger("optimum.exporters").warning("odd\nsecond line")
        logging.getLogger("root").warning("Please consider to run pre-processing before quantization")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("trace might be wrong", FutureWarning, stacklevel=1)
        return capsys.readouterr().err
    finally:
        logging.captureWarnings(False)


def test_setup_keeps_edgeqa_lines_and_reduces_the_rest(capsys):
    err = _emit(capsys, verbose=False)
    assert err.splitlines() == ["demo 1/4: building", "warning: optimum: odd"], err


def test_an_unreachable_hub_is_one_line_not_two_a_retry(capsys):
    setup_logging(libraries=True)
    hub = logging.getLogger("huggingface_hub.utils._http")
    for attempt in range(1, 6):
        hub.warning(
            "'(MaxRetryError(\"HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded\"), "
            "'(Request ID: 1)')' thrown while requesting HEAD https://huggingface.co/google/flan-t5-base/config.json"
        )
        hub.warning(f"Retrying in {2**attempt}s [Retry {attempt}/5].")
    hub.warning("something else")
    assert capsys.readouterr().err.splitlines() == [
        "warning: the Hugging Face hub does not answer; huggingface_hub retries for about a minute "
        "(HF_HUB_OFFLINE=1 stops at once)",
        "warning: huggingface_hub: something else",
    ]


def test_verbose_shows_everything(capsys):
    err = _emit(capsys, verbose=True)
    for text in ("demo 1/4: building", "missing keys", "odd\nsecond line", "pre-processing"):
        assert text in err, err


@pytest.mark.slow
def test_finetune_and_export_logs_are_edgeqa_lines_only(tiny_model, memo_data, tmp_path):
    """The real commands: no progress bars, no printed log dictionaries, no third-party warnings."""
    from typer.testing import CliRunner

    from edgeqa.cli import app

    run = tmp_path / "run"
    trained = CliRunner().invoke(
        app,
        ["finetune", "--model", str(tiny_model), "--data", str(memo_data), "-o", str(run)]
        + ["--max-steps", "4", "--eval-max-new-tokens", "4", "--device", "cpu"],
    )
    assert trained.exit_code == 0, trained.output
    assert re.search(r"^step 4/4 +\d+ s: .*exact match", trained.stderr, re.M), trained.stderr
    exported = CliRunner().invoke(
        app, ["export", str(run / "final"), str(tmp_path / "int8"), "--quantize", "int8", "--parity-samples", "8"]
    )
    assert exported.exit_code == 0, exported.output
    for log in (trained.stderr, exported.stderr):
        assert not re.search(r"Warning|it/s|examples/s|\{'loss'|missing keys|deprecated", log), log
        assert all(not line.startswith("warning:") for line in log.splitlines()), log
    assert "| exact_match |" in trained.stdout or "exact_match" in trained.stdout
