"""Fuzzed artifacts: random manifest mutations and byte flips end in a one-line `ArtifactError` or
in an answer, never in another exception, a hang or a memory blow-up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_artifact_checks import linked_copy, read_manifest, replace_file, write_manifest

from edgeqa.errors import ArtifactError
from edgeqa.manifest import Manifest, file_entry
from edgeqa.runtime import QAModel
from edgeqa.runtime.onnx_refs import GraphFormatError, external_tensors

QUESTION = "What is AI?"
#: Keys that only describe the artifact; changing them must not change an answer.
METADATA = ("model_name", "versions", "parity")
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

PATHS = [
    "../tokenizer.json",
    "/etc/passwd",
    "sub/encoder.onnx",
    "decoder.onnx\\..\\x",
    "tokenizer.json\x00",
    "..",
    ".",
    "",
    "C:\\Windows\\win.ini",
    "~/.ssh/id_rsa",
    "tokenizer.json/",
    "manifest.json",
    "config.json",
    "encoder.onnx",
    "embedding.data",
    "ｔｏｋｅｎｉｚｅｒ.json",
    "\ud800",
    "tok\u202eenizer.json",
]
HUGE = [0, -1, 1, 2, 2**31, 2**32 + 1, 2**63, -(2**63), 10**30, 10**40]
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(PATHS),
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON value (the root included)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _like(value: object) -> st.SearchStrategy:
    """Values of the same kind as `value` (what a subtle mutation would put there), or anything."""
    if isinstance(value, bool):
        return st.booleans() | json_values
    if isinstance(value, int):
        return st.sampled_from(HUGE) | st.integers(-3, 70000) | json_values
    if isinstance(value, str):
        return st.sampled_from(PATHS) | st.text(max_size=40) | json_values
    return json_values


def _mutate(data: st.DataObject, manifest: dict) -> dict:
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(_paths(manifest)[1:]), label="where")
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        op = data.draw(st.sampled_from(["set", "set", "delete", "add"]), label="op")
        if op == "set":
            parent[path[-1]] = data.draw(_like(parent[path[-1]]), label="value")
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][data.draw(st.text(max_size=8), label="key")] = data.draw(json_values, label="value")
    return manifest


def _runtime_part(manifest: dict) -> dict:
    return {key: value for key, value in manifest.items() if key not in METADATA}


@pytest.fixture(scope="module")
def original(artifact_tiny: Path) -> tuple[dict, list[int]]:
    """The valid manifest and the answer the unchanged artifact gives."""
    answer = QAModel.load(artifact_tiny, threads=1).answer(QUESTION, max_new_tokens=3)
    return read_manifest(artifact_tiny), answer.tokens


@pytest.fixture(scope="module")
def work(artifact_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return linked_copy(artifact_tiny, tmp_path_factory.mktemp("fuzz") / "artifact")


def _outcome(folder: Path, expected: list[int] | None) -> str:
    """Load and answer; `expected` tokens if the change cannot matter. Returns how the case ended."""
    try:
        manifest = Manifest.read(folder)
    except ArtifactError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
        event("refused reading the manifest")
        return "refused"
    assert manifest.describe()  # `edgeqa info` prints any manifest the reader accepts
    try:
        model = QAModel.load(folder, threads=1)
        answer = model.answer(QUESTION, max_new_tokens=3)
    except ArtifactError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
        event("refused loading or answering")
        return "refused"
    event("answered" + (", as the original" if expected is not None else ""))
    assert isinstance(answer.text, str) and 1 <= len(answer.tokens) <= 3
    assert all(0 <= token < model.manifest.dims.vocab_size for token in answer.tokens)
    if expected is not None:
        assert answer.tokens == expected
    return "answered"


SAME_LOADS = 25  # full loads of manifests whose runtime part is unchanged; the rest stop after reading
_same_loads = [0]


@settings(FUZZ, max_examples=1500)
@given(data=st.data())
def test_fuzzed_manifests(work, original, data):
    """Mutated values, missing and extra keys; any manifest the reader accepts is loaded and asked a question
    (after SAME_LOADS of them, those that differ from the original only in metadata are only read)."""
    manifest, expected = json.loads(json.dumps(original[0])), original[1]
    mutated = _mutate(data, manifest)
    write_manifest(work, json.dumps(mutated))
    same = _runtime_part(mutated) == _runtime_part(original[0])
    if same:
        _same_loads[0] += 1
        if _same_loads[0] > SAME_LOADS:
            try:
                assert Manifest.read(work).describe()
            except ArtifactError as e:  # a wrong type in metadata
                assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
            event("read (metadata only)")
            return
    if _outcome(work, expected if same else None) == "answered":  # then it can only name the artifact's own files
        names = {entry["path"] for entry in original[0]["files"].values()}
        assert {entry["path"] for entry in mutated["files"].values()} <= names


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_fuzzed_manifest_bytes(work, original, data):
    """Byte flips, truncation and pathological JSON in manifest.json itself."""
    text = json.dumps(original[0], indent=2).encode()
    kind = data.draw(st.sampled_from(["flip", "truncate", "nested", "digits", "not utf-8"]), label="kind")
    if kind == "flip":
        raw = bytearray(text)
        positions = st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4, unique=True)
        for position in data.draw(positions, label="at"):
            raw[position] ^= data.draw(st.integers(1, 255), label="xor")
        text = bytes(raw)
    elif kind == "truncate":
        text = text[: data.draw(st.integers(0, len(text) - 1), label="length")]
    elif kind == "nested":
        text = text.replace(b'"parity": null', b'"parity": ' + b"[" * 200_000 + b"]" * 200_000)
    elif kind == "digits":
        text = text.replace(b'"vocab_size": 32128', b'"vocab_size": ' + b"9" * 100_000)
    else:
        text = text.replace(b'"model_name": "', b'"model_name": "\xff\xfe')
    write_manifest(work, text)
    _outcome(work, None)


ROLES = ["encoder", "decoder", "encoder_weights", "decoder_weights", "embedding", "tokenizer", "config"]
FLIPS_PER_ROLE = int(os.environ.get("EDGEQA_FUZZ_FLIPS", "16"))


@pytest.mark.parametrize("role", ROLES)
@settings(FUZZ, max_examples=FLIPS_PER_ROLE)
@given(data=st.data())
def test_byte_flips_in_each_file(work, artifact_tiny, original, role, data):
    """Flips in a listed file, the manifest as sent (the checksum catches it) or re-signed by the sender."""
    name = original[0]["files"][role]["path"]
    raw = bytearray((artifact_tiny / name).read_bytes())
    for position in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8, unique=True), label="at"):
        raw[position] ^= data.draw(st.integers(1, 255), label="xor")
    resigned = data.draw(st.booleans(), label="resigned")
    event("re-signed" if resigned else "as sent")
    manifest = json.loads(json.dumps(original[0]))
    try:
        replace_file(work / name, bytes(raw))
        if resigned:
            manifest["files"][role] = dict(manifest["files"][role], sha256=file_entry(work, name).sha256)
        write_manifest(work, manifest)
        if resigned:
            _outcome(work, None)
        else:
            with pytest.raises(ArtifactError, match=f"{name} in .* does not match its sha256"):
                QAModel.load(work, threads=1)
    finally:
        (work / name).unlink()
        os.link(artifact_tiny / name, work / name)


def test_a_tokenizer_that_makes_tokenizers_panic_is_refused_in_one_line(work, artifact_tiny, original):
    """A byte the fuzzer found: a '(' in the normalizer's precompiled map makes the Rust code panic
    (pyo3's PanicException is no Exception), re-signed so that the checksum lets it through."""
    name = original[0]["files"]["tokenizer"]["path"]
    text = (artifact_tiny / name).read_bytes()
    start = text.index(b'"precompiled_charsmap": "') + len(b'"precompiled_charsmap": "')
    manifest = json.loads(json.dumps(original[0]))
    try:
        replace_file(work / name, text[: start + 40] + b"(" + text[start + 41 :])
        manifest["files"]["tokenizer"] = dict(manifest["files"]["tokenizer"], sha256=file_entry(work, name).sha256)
        write_manifest(work, manifest)
        with pytest.raises(ArtifactError, match=r"^tokenizer\.json cannot be read as a tokenizer .*re-export") as error:
            QAModel.load(work, threads=1)
        assert "\n" not in str(error.value)
    finally:
        (work / name).unlink()
        os.link(artifact_tiny / name, work / name)
        write_manifest(work, original[0])


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=4), st.integers(1, 500)))
def test_external_data_reader_on_random_bytes(data):
    try:
        tensors = external_tensors(data)
    except GraphFormatError:
        return
    assert all(isinstance(t.offset, int) for t in tensors)


# ------------------------------------------------------------------ `edgeqa ask`, one per category


def _case(folder: Path, category: str) -> None:
    data = read_manifest(folder)
    if category == "dotdot path":
        (folder / "tokenizer.json").rename(folder.parent / "tokenizer.json")
        data["files"]["tokenizer"]["path"] = "../tokenizer.json"
    elif category == "absolute path":
        data["files"]["decoder_weights"]["path"] = str(folder / "decoder.onnx.data")
    elif category == "backslash path":
        data["files"]["encoder"]["path"] = "..\\encoder.onnx"
    elif category == "NUL in path":
        data["files"]["embedding"]["path"] = "embedding.data\x00"
    elif category == "unicode":
        data["files"]["tokenizer"]["path"] = "ｔｏｋｅｎｉｚｅｒ.json"
    elif category == "symlink":
        (folder / "tokenizer.json").unlink()
        (folder / "tokenizer.json").symlink_to("/etc/passwd")
    elif category == "wrong type":
        data["dims"]["num_heads"] = "four"
    elif category == "missing key":
        del data["files"]["encoder"]
    elif category == "extra key":
        data["files"]["plugin"] = dict(data["files"]["config"], path="plugin.so")
    elif category == "huge number":
        data["dims"]["num_decoder_layers"] = 10**12
    elif category == "manifest size":
        data["model_name"] = "x" * 2_000_000
    elif category == "byte flip":
        raw = bytearray((folder / "decoder.onnx").read_bytes())
        raw[len(raw) // 3] ^= 0x5A
        replace_file(folder / "decoder.onnx", bytes(raw))
    write_manifest(folder, data)


CATEGORIES = [
    ("dotdot path", r"files\.tokenizer\.path is '\.\./tokenizer\.json'"),
    ("absolute path", r"files\.decoder_weights\.path is '/"),
    ("backslash path", r"files\.encoder\.path is '\.\.\\\\encoder\.onnx'"),
    ("NUL in path", r"files\.embedding\.path is 'embedding\.data\\x00'"),
    ("unicode", r"files\.tokenizer\.path is '\\uff54"),
    ("symlink", r"tokenizer\.json \(files\.tokenizer\) .* is a symbolic link"),
    ("wrong type", r"num_heads"),
    ("missing key", r"encoder"),
    ("extra key", r"files has unknown role\(s\) 'plugin'"),
    ("huge number", r"dims\.num_decoder_layers is 1000000000000, not an integer"),
    ("manifest size", r"manifest\.json \(the manifest\) .* is larger than 1000000 bytes"),
    ("byte flip", r"decoder\.onnx in .* does not match its sha256"),
]


@pytest.mark.slow
@pytest.mark.parametrize("category, message", CATEGORIES, ids=[c for c, _ in CATEGORIES])
def test_edgeqa_ask_refuses_with_one_line(artifact_tiny, tmp_path, category, message):
    folder = linked_copy(artifact_tiny, tmp_path / "artifact")
    _case(folder, category)
    result = subprocess.run(
        [sys.executable, "-m", "edgeqa.cli", "ask", str(folder), QUESTION],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, EDGEQA_DEBUG="0"),
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert re.search(message, result.stderr), result.stderr
