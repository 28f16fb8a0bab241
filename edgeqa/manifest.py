"""`manifest.json`: reading, checking and writing the one contract between export and the runtime.

The schema (records, enums, constants) is `edgeqa.manifest_schema`; this module re-exports it, so
`from edgeqa.manifest import Manifest, QuantizationRecord` is the one import for both. The runtime
finds every file through the manifest, never by matching names. Reading checks each value against
its field's type, so a wrong key, type or enum value is an `ArtifactError` here instead of a
`KeyError` deep in the runtime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeqa import artifact_checks
from edgeqa.atomic import write_atomic
from edgeqa.errors import ArtifactError
from edgeqa.manifest_schema import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    OLDEST_READABLE_FORMAT,
    QUESTIONS_DIM,
    REQUIRED_ROLES,
    ActivationGranularity,
    CpuRecord,
    FallbackMode,
    FileEntry,
    FloatGroupRecord,
    GateAttempt,
    GenerationDefaults,
    ManifestRecord,
    ModelDims,
    OutlierSearch,
    ParityRecord,
    Preset,
    QuantizationRecord,
    QuantMethod,
    SharedTensor,
    SmoothingRecord,
    SpecialTokens,
    WeightType,
    cache_names,
)
from edgeqa.typed_json import read_record

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "OLDEST_READABLE_FORMAT",
    "QUESTIONS_DIM",
    "REQUIRED_ROLES",
    "ActivationGranularity",
    "CpuRecord",
    "FallbackMode",
    "FileEntry",
    "FloatGroupRecord",
    "GateAttempt",
    "GenerationDefaults",
    "Manifest",
    "ManifestRecord",
    "ModelDims",
    "OutlierSearch",
    "ParityRecord",
    "Preset",
    "QuantMethod",
    "QuantizationRecord",
    "SharedTensor",
    "SmoothingRecord",
    "SpecialTokens",
    "WeightType",
    "cache_names",
    "file_entry",
    "sha256_of",
]


class Manifest(ManifestRecord):
    """The fields of `ManifestRecord`, read from and written to `manifest.json`."""

    def to_json(self) -> str:
        """The manifest as `manifest.json` holds it (an enum value is its string)."""
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Check the format version first, then every field's type; then the roles the runtime needs.

        Raises:
            ArtifactError: naming the version, the field or the role, and what to do.
        """
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ArtifactError("manifest.json has no integer format_version; re-export the artifact")
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"manifest format {version} is newer than this edgeqa supports ({FORMAT_VERSION}); "
                "upgrade edgeqa or re-export"
            )
        if version < OLDEST_READABLE_FORMAT:
            raise ArtifactError(
                f"manifest format {version} is from an older edgeqa (this one reads "
                f"{OLDEST_READABLE_FORMAT} to {FORMAT_VERSION}); "
                "re-export the checkpoint with `edgeqa export`"
            )
        manifest = read_record(cls, data, "manifest.json", ArtifactError, "re-export the artifact")
        artifact_checks.check_manifest(manifest)
        missing = [role for role in REQUIRED_ROLES if role not in manifest.files]
        missing += [shared.role for shared in manifest.shared_tensors if shared.role not in manifest.files]
        if missing:
            raise ArtifactError(f"manifest.json lists no file for {', '.join(missing)}; re-export the artifact")
        return manifest

    @classmethod
    def read(cls, folder: Path, expect_sha256: str | None = None) -> Manifest:
        """Read and validate `folder/manifest.json` (optionally pinned by its sha256), names and limits included."""
        path = Path(folder) / MANIFEST_NAME
        try:
            data = json.loads(artifact_checks.read_manifest(folder, expect_sha256).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON, or a 5000-digit number
            problem = artifact_checks.shown(str(e))
            raise ArtifactError(f"{path} is not valid JSON ({problem}); re-export the artifact") from e
        if not isinstance(data, dict):
            raise ArtifactError(f"{path} does not hold a JSON object; re-export the artifact")
        return cls.from_dict(data)

    def write(self, folder: Path) -> Path:
        """Write `folder/manifest.json` atomically: a reader sees the old manifest or the new one, never a part."""
        path = Path(folder) / MANIFEST_NAME
        write_atomic(path, self.to_json())
        return path

    def verify_files(self, folder: Path, checksums: bool = True) -> None:
        """Check that the folder holds exactly the listed files, with their sizes and digests.

        Raises:
            ArtifactError: naming the first missing, extra, resized or corrupted file.
        """
        folder = Path(folder)
        extra = artifact_checks.extra_files(folder, self)
        if extra:
            raise ArtifactError(
                f"artifact {folder} holds files its manifest does not list: {', '.join(extra)}; "
                "remove them or re-export"
            )
        for role, entry in self.files.items():
            artifact_checks.check_file(folder, role, entry, checksum=checksums)

    def describe(self) -> str:
        """A summary for people, as `edgeqa info` prints it (`edgeqa.cli_display.describe`)."""
        from edgeqa.cli_display import describe  # display lives with the CLI; serve's /info shows it too

        return describe(self)


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_entry(folder: Path, name: str) -> FileEntry:
    path = Path(folder) / name
    return FileEntry(path=name, size=path.stat().st_size, sha256=sha256_of(path))
