"""`verify_artifact`: every check the loader makes, one report line each, for an artifact received
from elsewhere before it is deployed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeqa import artifact_checks
from edgeqa.errors import ArtifactError, EdgeQAError
from edgeqa.manifest import FileEntry, Manifest

SMOKE_QUESTION = "What is the capital of France?"


@dataclass(frozen=True)
class Check:
    """One check of the report.

    Attributes:
        name: What was checked (`manifest`, `file tokenizer`, `graph decoder`, ...).
        ok: Whether it passed.
        detail: What was found, or the problem and the fix.
    """

    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """What `verify_artifact` found.

    Attributes:
        folder: The artifact folder.
        manifest_sha256: sha256 of manifest.json (pin the artifact with it), None if unreadable.
        checks: The checks in the order they ran; later stages are skipped after a failed one.
    """

    folder: Path
    manifest_sha256: str | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def format(self) -> str:
        """The report as `edgeqa verify` prints it."""
        lines = [f"artifact        {self.folder}", f"manifest sha256 {self.manifest_sha256 or '-'}"]
        lines += [f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<24} {c.detail}" for c in self.checks]
        verdict = "all checks passed" if self.ok else f"{len(self.problems)} problem(s): do not deploy this artifact"
        return "\n".join([*lines, verdict])

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "manifest_sha256": self.manifest_sha256,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }

    def _run(self, name: str, check: Callable[[], str]) -> bool:
        try:
            detail = check()
        except EdgeQAError as e:
            self.checks.append(Check(name, False, str(e)))
            return False
        self.checks.append(Check(name, True, detail))
        return True


def verify_artifact(folder: str | Path, expect_sha256: str | None = None, threads: int = 1) -> VerifyReport:
    """Run every check `QAModel.load` runs, each file's sha256 included, then answer one question.

    Args:
        folder: The artifact folder.
        expect_sha256: The manifest's pinned sha256; another manifest fails the report.
        threads: onnxruntime threads for the graph and answer checks.

    Returns:
        The report; `report.ok` is False if any check failed (nothing is raised for a bad artifact).
    """
    from edgeqa.runtime.graphs import T5Graphs
    from edgeqa.runtime.model import QAModel
    from edgeqa.runtime.onnx_refs import check_graph_files
    from edgeqa.runtime.tokenizer import PromptTokenizer

    folder = Path(folder)
    report = VerifyReport(folder)
    loaded: dict[str, Any] = {}

    def manifest() -> str:
        data = artifact_checks.read_manifest(folder)
        report.manifest_sha256 = hashlib.sha256(data).hexdigest()
        loaded["manifest"] = m = Manifest.read(folder, expect_sha256=expect_sha256)
        pinned = ", matches the pinned sha256" if expect_sha256 else " (not pinned: pass --expect-sha256)"
        return f"format {m.format_version}, {len(m.files)} files, names and limits in bounds{pinned}"

    if not report._run("manifest", manifest):
        return report
    m: Manifest = loaded["manifest"]

    def extra() -> str:
        names = artifact_checks.extra_files(folder, m)
        if names:
            raise ArtifactError(f"files the manifest does not list: {', '.join(names)}; remove them or re-export")
        return "none"

    def listed(role: str, entry: FileEntry) -> Callable[[], str]:
        def check() -> str:
            artifact_checks.check_file(folder, role, entry)
            return f"{entry.path}, {entry.size} bytes, sha256 matches"

        return check

    def external_data(role: str) -> Callable[[], str]:
        def check() -> str:
            check_graph_files(folder, m, role)
            return "reads only its own weights files, within their sizes"

        return check

    report._run("unlisted files", extra)
    for role, entry in m.files.items():
        report._run(f"file {role}", listed(role, entry))
    if not report.ok:
        return report
    for role in ("encoder", "decoder"):
        report._run(f"graph {role} data", external_data(role))
    if not report.ok:
        return report

    def graphs() -> str:
        loaded["graphs"] = T5Graphs(folder, m, threads=threads)
        return f"inputs and outputs of a {m.dims.num_decoder_layers}-layer T5"

    def tokenizer() -> str:
        loaded["tokenizer"] = PromptTokenizer(folder / m.files["tokenizer"].path, m)
        return f"{m.tokenizer_vocab_size} tokens, special tokens match the model"

    graphs_ok = report._run("graph interfaces", graphs)
    if not report._run("tokenizer", tokenizer) or not graphs_ok:
        return report

    def answer() -> str:
        model = QAModel(folder, m, loaded["graphs"], loaded["tokenizer"])
        result = model.answer(SMOKE_QUESTION, max_new_tokens=8)
        return f"{SMOKE_QUESTION!r} -> {artifact_checks.shown(result.text, 40)}"

    report._run("answers", answer)
    return report
