"""The loader treats an artifact folder as untrusted: it cannot be steered outside the folder, and
bounds every size and number before it allocates."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeqa.artifact_checks import MAX_MANIFEST_BYTES
from edgeqa.cli import app
from edgeqa.errors import ArtifactError
from edgeqa.manifest import file_entry
from edgeqa.runtime import QAModel, verify_artifact
from edgeqa.runtime.onnx_refs import GraphFormatError, external_tensors

#: Roles whose file the loader opens, and the file export writes for each.
OPENED = {
    "tokenizer": "tokenizer.json",
    "encoder": "encoder.onnx",
    "decoder": "decoder.onnx",
    "encoder_weights": "encoder.onnx.data",
    "decoder_weights": "decoder.onnx.data",
    "embedding": "embedding.data",
}


def linked_copy(source: Path, target: Path) -> Path:
    """A copy of an artifact whose data files are hard links (cheap); manifest.json is a real copy.

    Replace a file with `replace_file`, never write into it: a hard link shares the original's bytes.
    """
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name == "manifest.json":
            shutil.copyfile(path, target / path.name)
        else:
            os.link(path, target / path.name)
    return target


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` as a new file at `path` (a new inode, so a hard-linked original is untouched)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def write_manifest(folder: Path, data: dict | str | bytes) -> None:
    text = data if isinstance(data, str | bytes) else json.dumps(data)
    replace_file(folder / "manifest.json", text if isinstance(text, bytes) else text.encode("utf-8"))


def relist(folder: Path, role: str, path: Path) -> None:
    """Point a role at `path` in the manifest, with the size and sha256 of what is there now (as a sender would)."""
    data = read_manifest(folder)
    entry = file_entry(path.parent, path.name)
    data["files"][role] = {"path": data["files"][role]["path"], "size": entry.size, "sha256": entry.sha256}
    write_manifest(folder, data)


@pytest.fixture
def copy_of(artifact_tiny: Path, tmp_path: Path) -> Path:
    return linked_copy(artifact_tiny, tmp_path / "artifact")


# ------------------------------------------------------------------ paths that leave the folder


@pytest.mark.parametrize("role", OPENED)
@pytest.mark.parametrize("verify", [True, False], ids=["checksums", "no-checksums"])
def test_file_moved_up_a_folder_is_refused_naming_the_entry(copy_of, role, verify):
    """The issue's case: move the file one folder up, point the manifest at `../NAME`; its checksum still matches."""
    name = OPENED[role]
    (copy_of / name).rename(copy_of.parent / name)
    data = read_manifest(copy_of)
    data["files"][role]["path"] = f"../{name}"
    write_manifest(copy_of, data)
    with pytest.raises(ArtifactError, match=rf"files\.{role}\.path is '\.\./{name}', not a plain file name"):
        QAModel.load(copy_of, verify=verify)


@pytest.mark.parametrize("role", OPENED)
@pytest.mark.parametrize(
    "path",
    ["{outside}", "/etc/passwd", "sub/{name}", "sub\\{name}", "..", ".", "", "{name}\x00.txt", "C:{name}", ".{name}"],
)
def test_paths_that_are_not_plain_names_are_refused(copy_of, tmp_path, role, path):
    outside = tmp_path / OPENED[role]
    shutil.copyfile(copy_of / OPENED[role], outside)
    data = read_manifest(copy_of)
    data["files"][role]["path"] = path.format(outside=outside, name=OPENED[role])
    write_manifest(copy_of, data)
    with pytest.raises(ArtifactError, match=rf"files\.{role}\.path is .* not a plain file name"):
        QAModel.load(copy_of, verify=False)


@pytest.mark.parametrize("target", ["/etc/passwd", "inside"])
@pytest.mark.parametrize("role", ["tokenizer", "decoder", "embedding"])
def test_symbolic_links_are_refused_even_inside(copy_of, role, target):
    """A symlink named like the file, its size and sha256 in the manifest as a sender would write them."""
    name = OPENED[role]
    pointed = Path("/etc/passwd") if target == "/etc/passwd" else copy_of / "config.json"
    (copy_of / name).unlink()
    (copy_of / name).symlink_to(pointed)
    relist(copy_of, role, pointed)
    if role == "embedding":  # a shape that fits the target's size, too
        data = read_manifest(copy_of)
        data["shared_tensors"][0].update(dtype="uint8", shape=[pointed.stat().st_size])
        write_manifest(copy_of, data)
    with pytest.raises(ArtifactError, match=rf"{name} \(files\.{role}\) .* is a symbolic link"):
        QAModel.load(copy_of)


def test_manifest_symlink_and_fifo_are_refused(copy_of, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (copy_of / "tokenizer.json").unlink()
    os.mkfifo(copy_of / "tokenizer.json")  # would block a plain open() forever
    with pytest.raises(ArtifactError, match=r"tokenizer.json \(files.tokenizer\) .* not a regular file"):
        QAModel.load(copy_of)
    real = copy_of.parent / "manifest.json"
    (copy_of / "manifest.json").rename(real)
    (copy_of / "manifest.json").symlink_to(real)
    with pytest.raises(ArtifactError, match=r"manifest.json \(the manifest\) .* is a symbolic link"):
        QAModel.load(copy_of)


def test_two_roles_naming_one_file_are_refused(copy_of):
    data = read_manifest(copy_of)
    data["files"]["tokenizer"] = data["files"]["config"]
    write_manifest(copy_of, data)
    with pytest.raises(ArtifactError, match="files.config.path names config.json, which files.tokenizer names too"):
        QAModel.load(copy_of)


# ------------------------------------------------------------------ the graphs' own references


def _retarget_graph(folder: Path, role: str, location: str, offset: int | None = None) -> None:
    """Point the first external tensor of a graph elsewhere, and list the graph's new checksum."""
    import onnx

    path = folder / OPENED[role]
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for item in tensor.external_data:
        if item.key == "location":
            item.value = location
        if item.key == "offset" and offset is not None:
            item.value = str(offset)
    replace_file(path, model.SerializeToString())
    relist(folder, role, path)


@pytest.mark.parametrize(
    "role, location, message",
    [
        ("encoder", "../encoder.onnx.data", r"'\.\./encoder\.onnx\.data', which is not a weights file"),
        ("encoder", "/etc/passwd", r"'/etc/passwd', which is not a weights file"),
        ("decoder", "tokenizer.json", r"'tokenizer\.json', which is not a weights file"),
        ("decoder", "encoder.onnx.data", r"'encoder\.onnx\.data', which is not a weights file the manifest gives"),
    ],
)
def test_graph_external_data_outside_its_files_is_refused(copy_of, role, location, message):
    _retarget_graph(copy_of, role, location)
    with pytest.raises(ArtifactError, match=rf"{OPENED[role]} \({role}\): tensor .* {message}"):
        QAModel.load(copy_of)


def test_graph_external_data_past_the_end_of_its_file_is_refused(copy_of):
    _retarget_graph(copy_of, "decoder", "decoder.onnx.data", offset=1 << 40)
    with pytest.raises(ArtifactError, match=r"decoder.onnx \(decoder\): tensor .* reads bytes 1099511627776\.\."):
        QAModel.load(copy_of)


def test_external_data_reader_agrees_with_onnx(artifact_tiny):
    import onnx

    for name in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(artifact_tiny / name), load_external_data=False)
        expected = []
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = {item.key: item.value for item in tensor.external_data}
                expected.append((tensor.name, info["location"], int(info.get("offset", 0)), int(info["length"])))
        tensors = external_tensors((artifact_tiny / name).read_bytes())
        found = [(t.name, t.location, t.offset, t.length) for t in tensors]
        assert found == expected and len(found) > 10


@pytest.mark.parametrize("data", [b"\x80", b"\x0a\x05ab", b"\x0b", b"\x00\x01", b"\x3a\x02\x0a\xff"])
def test_external_data_reader_refuses_malformed_protobuf(data):
    with pytest.raises(GraphFormatError):
        external_tensors(data)


# ------------------------------------------------------------------ limits


def test_manifest_over_the_size_limit_is_refused(copy_of):
    text = json.dumps(read_manifest(copy_of))
    write_manifest(copy_of, text + " " * MAX_MANIFEST_BYTES)
    with pytest.raises(ArtifactError, match=f"manifest.json .* larger than {MAX_MANIFEST_BYTES} bytes"):
        QAModel.load(copy_of)


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_decoder_layers", 10**9),
        ("num_layers", 0),
        ("num_heads", 2**63),
        ("vocab_size", 10**12),
        ("d_kv", -8),
        ("d_model", True),
        ("vocab_size", 32128.0),
    ],
)
def test_absurd_dimensions_are_refused(copy_of, key, value):
    data = read_manifest(copy_of)
    data["dims"][key] = value
    write_manifest(copy_of, data)
    # A wrong type is the typed record's message, a wrong value the limit's.
    with pytest.raises(ArtifactError, match=rf"dims\.{key} is .*, not an integer from 1 to|dims: {key} should be int"):
        QAModel.load(copy_of)


@pytest.mark.parametrize("shape", [[2**40, 2**40], [32128, 33], [0, 32], [-1, -4112384], [32128 * 32]])
def test_shared_tensor_shapes_that_do_not_match_the_file_are_refused(copy_of, shape):
    data = read_manifest(copy_of)
    data["shared_tensors"][0]["shape"] = shape
    write_manifest(copy_of, data)
    expected = (
        r"shared_tensors\[0\]\.shape|embedding.data holds 4112384 bytes, not"
        r"|tensor 'shared.weight' is \[32128, 32\] of ONNX type 1"
    )
    with pytest.raises(ArtifactError, match=expected):
        QAModel.load(copy_of)


def test_more_files_than_the_format_has_roles_are_refused(copy_of):
    data = read_manifest(copy_of)
    for i in range(20):
        data["files"][f"extra{i}"] = data["files"]["config"]
    write_manifest(copy_of, data)
    with pytest.raises(ArtifactError, match=r"files has unknown role\(s\) 'extra0', 'extra1', 'extra10' \(known:"):
        QAModel.load(copy_of)


def test_special_tokens_outside_the_vocabulary_are_refused(copy_of):
    data = read_manifest(copy_of)
    data["special_tokens"]["eos"] = 2**70
    write_manifest(copy_of, data)
    with pytest.raises(ArtifactError, match=r"special_tokens\.eos is 1180591620717411303424, not an integer from 0"):
        QAModel.load(copy_of)
    data["special_tokens"]["eos"] = data["dims"]["vocab_size"]
    write_manifest(copy_of, data)
    with pytest.raises(ArtifactError, match=r"special_tokens\.eos is outside the model's \d+ outputs"):
        QAModel.load(copy_of)


def test_a_vocabulary_shrunk_in_the_manifest_is_named_as_such(copy_of):
    data = read_manifest(copy_of)
    data["dims"]["vocab_size"] = 1000
    write_manifest(copy_of, data)
    with pytest.raises(ArtifactError, match=r"tokenizer_vocab_size is \d+, more than the model's 1000 outputs"):
        QAModel.load(copy_of)


# ------------------------------------------------------------------ pinning and `edgeqa verify`


def test_pinned_manifest_hash(copy_of):
    digest = hashlib.sha256((copy_of / "manifest.json").read_bytes()).hexdigest()
    assert QAModel.load(copy_of, expect_sha256=digest.upper()).answer("What is AI?", max_new_tokens=2).tokens
    data = read_manifest(copy_of)
    data["model_name"] = "someone else's"
    write_manifest(copy_of, data)
    with pytest.raises(ArtifactError, match=f"has sha256 [0-9a-f]{{64}}, not the pinned '{digest}'"):
        QAModel.load(copy_of, expect_sha256=digest)


def test_verify_reports_every_check(artifact_tiny):
    report = verify_artifact(artifact_tiny)
    assert report.ok, report.format()
    names = [check.name for check in report.checks]
    assert names[:2] == ["manifest", "unlisted files"]
    assert {f"file {role}" for role in OPENED} <= set(names)
    assert names[-5:] == ["graph encoder data", "graph decoder data", "graph interfaces", "tokenizer", "answers"]
    assert report.manifest_sha256 == hashlib.sha256((artifact_tiny / "manifest.json").read_bytes()).hexdigest()


def test_verify_names_each_problem(copy_of):
    path = copy_of / "decoder.onnx.data"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    replace_file(path, bytes(data))
    (copy_of / "notes.txt").write_text("hi")
    report = verify_artifact(copy_of)
    assert not report.ok
    assert [(c.name, c.detail[:40]) for c in report.problems] == [
        ("unlisted files", "files the manifest does not list: 'notes"),
        ("file decoder_weights", "decoder.onnx.data in " + str(copy_of)[:19]),
    ]
    assert "sha256" in report.problems[1].detail and "graph interfaces" not in [c.name for c in report.checks]


def test_verify_command(artifact_tiny, copy_of):
    digest = hashlib.sha256((artifact_tiny / "manifest.json").read_bytes()).hexdigest()
    result = CliRunner().invoke(app, ["verify", str(artifact_tiny), "--expect-sha256", digest])
    assert result.exit_code == 0, result.output
    assert "all checks passed" in result.stdout and digest in result.stdout
    data = read_manifest(copy_of)
    data["files"]["tokenizer"]["path"] = "../tokenizer.json"
    write_manifest(copy_of, data)
    result = CliRunner().invoke(app, ["verify", str(copy_of), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["checks"][0]["ok"] is False
    assert result.stderr.startswith("error: ") and "files.tokenizer.path is '../tokenizer.json'" in result.stderr
    assert result.stderr.count("\n") == 1
