"""What `build_index` reports: progress after each file, and a summary at the end."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Skipped files and warnings listed one by one in `IndexSummary.format`; the rest are counted.
SHOWN = 10


@dataclass(frozen=True)
class Progress:
    """Where indexing stands, handed to the `progress` callback after each file."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    path: str


@dataclass
class IndexSummary:
    """What `build_index` did.

    Attributes:
        indexed: Files (re-)indexed in this run, as shown in citations.
        unchanged: Files `update` found unchanged (size and mtime, else sha256).
        removed: Files `update` dropped because they are gone from the paths given.
        skipped: `(path, reason)` of each file not indexed: unsupported, binary, unreadable, empty.
        warnings: Problems in files that were indexed anyway (bad UTF-8, bad JSONL lines).
        files: Files in the index now.
        passages: Passages in the index now.
        passages_added: Passages written in this run.
    """

    output: Path
    passage_tokens: int
    indexed: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: int = 0
    passages: int = 0
    passages_added: int = 0
    bytes_read: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__, output=str(self.output))
        data["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return data

    def format(self) -> str:
        lines = [
            f"{self.output}: {self.files} files, {self.passages} passages of at most {self.passage_tokens} tokens "
            f"({len(self.indexed)} indexed, {self.unchanged} unchanged, {len(self.removed)} removed, "
            f"{len(self.skipped)} skipped; {self.bytes_read / 1e6:.1f} MB in {self.seconds:.1f} s)"
        ]
        lines += [f"skipped {path}: {reason}" for path, reason in self.skipped[:SHOWN]]
        if len(self.skipped) > SHOWN:
            reasons = Counter(reason for _, reason in self.skipped[SHOWN:])
            counts = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common(5))
            lines.append(f"skipped {len(self.skipped) - SHOWN} more ({counts}{', ...' if len(reasons) > 5 else ''})")
        lines += [f"warning: {warning}" for warning in self.warnings[:SHOWN]]
        if len(self.warnings) > SHOWN:
            lines.append(f"... and {len(self.warnings) - SHOWN} more warnings (the JSON summary lists them all)")
        return "\n".join(lines)
