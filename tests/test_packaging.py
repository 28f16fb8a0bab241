"""The wheel: installs with no extras in a fresh venv (no torch), answers a question there; the
Docker runtime image builds and answers (podman + chroot, as no Docker engine runs here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int = 900, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT))
    (built,) = dist.glob("edgeqa-*.whl")
    return built


@pytest.mark.slow
def test_wheel_runs_without_torch_in_a_fresh_venv(wheel, artifact_int8, tmp_path):
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv))
    _run(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel))
    python, edgeqa = venv / "bin" / "python", venv / "bin" / "edgeqa"
    missing = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert missing.returncode != 0, "the base install must not bring torch"
    assert "ask" in _run(str(edgeqa), "--help").stdout
    # the configs and the public API import on a base install; the runtime still brings no torch
    imports = (
        "import sys; from edgeqa.finetune import FinetuneConfig; from edgeqa.export import ExportConfig; "
        "from edgeqa import QAModel, GenerationOptions, Answer, __version__; "
        "FinetuneConfig(epochs=1); ExportConfig(checkpoint='c', output='o', quantize='int8'); "
        "print(__version__, sorted({'torch', 'transformers', 'optimum'} & set(sys.modules)))"
    )
    assert _run(str(python), "-c", imports, cwd=tmp_path).stdout.split() == ["0.1.0", "[]"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    started = time.perf_counter()
    answer = _run(
        str(edgeqa), "ask", str(artifact_int8), "What is the capital of France?", "--json", env=env, cwd=tmp_path
    )
    cold_start = time.perf_counter() - started
    assert json.loads(answer.stdout)["answer_tokens"] >= 1
    refused = subprocess.run(
        [str(edgeqa), "finetune", "-o", str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert (
        refused.returncode == 1
        and "error: fine-tuning needs torch, which is not installed: pip install 'edgeqa[train]'" in refused.stderr
    ), refused.stderr
    print(f"\nfresh venv: {_folder_mb(venv):.0f} MB; cold start (process start to first answer): {cold_start:.2f} s")


def _stages() -> dict[str, str]:
    """The Dockerfile's stages: name -> its instructions."""
    stages: dict[str, str] = {}
    name = ""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("FROM "):
            name = line.split(" AS ")[-1].strip()
            stages[name] = ""
        elif name:
            stages[name] += line + "\n"
    return stages


def test_each_environment_has_its_docker_target():
    """train on transformers 5.x (the train extra alone, transformers named so pip cannot quietly go back),
    export on Optimum's stack, and the runtime last (the default target)."""
    stages = _stages()
    assert list(stages)[-1] == "runtime" and {"train", "export"} <= set(stages)
    assert '[train]" "${TRANSFORMERS}"' in stages["train"] and 'TRANSFORMERS="transformers>=5,<6"' in stages["train"]
    assert "[all]" not in stages["train"] and "[export]" not in stages["train"]
    assert "[export]" in stages["export"] and "[train]" not in stages["export"]
    assert "[serve]" in stages["runtime"] and "site-packages/edgeqa/bench" in stages["runtime"]


def test_extras_do_not_pin_each_other_back():
    """The train extra allows transformers 5.x, the base install the tokenizers it needs; only the export
    extra holds Optimum's range (docs/environments.md)."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def spec(requirements: list[str], name: str) -> SpecifierSet:
        (found,) = [Requirement(r).specifier for r in requirements if Requirement(r).name == name]
        return found

    extras = project["optional-dependencies"]
    assert {"4.57.6", "5.25.0"} <= set(spec(extras["train"], "transformers").filter(["4.57.6", "5.25.0"]))
    assert "0.23.3" in spec(project["dependencies"], "tokenizers")  # transformers >= 5.16 needs 0.23
    assert "5.25.0" not in spec(extras["export"], "transformers")  # Optimum's pin, there only


BASE_IMAGE = "localhost/edgeqa-test-base:bookworm"


def _podman(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return _run("podman", *args, timeout=timeout)


@pytest.mark.slow
def test_runtime_image_builds_runs_as_non_root_and_answers(artifact_int8, tmp_path):
    if not shutil.which("podman") or not shutil.which("debootstrap"):
        pytest.skip(
            "podman and debootstrap are needed to build the image without a Docker engine "
            "(apt-get install podman debootstrap); .ci/run installs them"
        )
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE]).returncode != 0:
        rootfs = tmp_path / "rootfs"
        _run(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python3-pip",
            "bookworm",
            str(rootfs),
            timeout=1200,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        _run("podman", "import", "-", BASE_IMAGE, stdin=tar.stdout)
        tar.wait()
    tag = "localhost/edgeqa-test:runtime"
    _podman(
        "build",
        "--isolation=chroot",
        "-v",
        "/etc/ssl/certs:/etc/ssl/certs:ro",
        "--build-arg",
        f"BASE={BASE_IMAGE}",
        "--target",
        "runtime",
        "-t",
        tag,
        str(ROOT),
    )
    entrypoint, user, size = (
        _podman("image", "inspect", tag, "--format", "{{json .Config.Entrypoint}}|{{.Config.User}}|{{.Size}}")
        .stdout.strip()
        .split("|")
    )
    assert json.loads(entrypoint) == ["edgeqa"] and user == "edgeqa"

    image = tmp_path / "image"
    image.mkdir()
    container = _podman("create", tag).stdout.strip()
    export = subprocess.Popen(["podman", "export", container], stdout=subprocess.PIPE)
    _run("tar", "-C", str(image), "-x", stdin=export.stdout)
    export.wait()
    subprocess.run(["podman", "rm", container], capture_output=True)
    assert not list(image.glob("opt/edgeqa/lib/python3*/site-packages/torch")), "torch in the runtime image"
    site = next(image.glob("opt/edgeqa/lib/python3*/site-packages"))
    assert (site / "edgeqa" / "runtime").is_dir() and not (site / "edgeqa" / "bench").exists(), "the benchmark harness"
    shutil.copytree(artifact_int8, image / "model", dirs_exist_ok=True)
    uid = _run("chroot", str(image), "id", "-u", "edgeqa").stdout.strip()
    assert uid != "0"
    # A container runtime mounts /proc; onnxruntime needs it to open the weights files.
    _run("mount", "-t", "proc", "proc", str(image / "proc"))
    try:
        answer = _run(
            shutil.which("chroot"),
            f"--userspec={uid}:{uid}",
            str(image),
            "/opt/edgeqa/bin/edgeqa",
            "ask",
            "/model",
            "What is the capital of France?",
            "--json",
            env={"PATH": "/opt/edgeqa/bin:/usr/bin:/bin", "HOME": "/home/edgeqa"},
        )
        served = _run(
            shutil.which("chroot"),
            f"--userspec={uid}:{uid}",
            str(image),
            "/opt/edgeqa/bin/python",
            "-c",
            "import edgeqa.serve, uvicorn; print(uvicorn.__version__)",
            env={"PATH": "/opt/edgeqa/bin:/usr/bin:/bin", "HOME": "/home/edgeqa"},
        )
        assert served.stdout.strip(), "the runtime image lacks the serve extra"
        assert not list(image.glob("opt/edgeqa/lib/python3*/site-packages/uvloop")), "plain uvicorn only"
    finally:
        subprocess.run(["umount", str(image / "proc")], capture_output=True)
    assert json.loads(answer.stdout)["answer_tokens"] >= 1
    subprocess.run(["podman", "image", "prune", "-f"], capture_output=True)  # the wheel stage's layers
    print(f"\nruntime image: {int(size) / 1e6:.0f} MB")
