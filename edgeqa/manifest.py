"""`manifest.json`: the one contract between export and the runtime.

The writer (`edgeqa.export`) and the reader (`edgeqa.runtime`) share this definition. The
runtime finds every file through the manifest, never by matching names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeqa.errors import ArtifactError

# 2: the encoder graph returns the cross-attention cache and one decoder graph runs every step
# (1 had Optimum's merged decoder).
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
#: Roles the runtime needs; other roles (the model's config files) are listed for checksums only.
REQUIRED_ROLES = ("encoder", "decoder", "tokenizer")


def cache_names(layers: int, attention: str) -> list[str]:
    """The graphs' cache tensors, key and value of each decoder layer; `attention` is "decoder" (self)
    or "encoder" (cross). Graph inputs carry them after "past_key_values.", outputs after "present."."""
    return [f"{layer}.{attention}.{kv}" for layer in range(layers) for kv in ("key", "value")]


@dataclass(frozen=True)
class FileEntry:
    """One file of the artifact.

    Attributes:
        path: Name relative to the artifact folder.
        size: Size in bytes.
        sha256: Hex digest of the content.
    """

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelDims:
    """The model dimensions the runtime needs to build empty caches.

    Attributes:
        num_layers: Encoder layers.
        num_decoder_layers: Decoder layers (one self- and one cross-attention cache each).
        num_heads: Attention heads.
        d_kv: Size of one head (not d_model / num_heads: flan-t5-small has 512 / 6 != 64).
        d_model: Hidden size.
        vocab_size: Rows of the output layer (32128 for FLAN-T5; the tokenizer has 32100).
    """

    num_layers: int
    num_decoder_layers: int
    num_heads: int
    d_kv: int
    d_model: int
    vocab_size: int


@dataclass(frozen=True)
class SharedTensor:
    """A weight both graphs use, stored once in a file of its own (the embedding table).

    The runtime maps that file once and gives the same tensor to both sessions, in place of
    each graph's reference to it.

    Attributes:
        role: The file's role in `Manifest.files`.
        dtype: numpy dtype name of the raw data.
        shape: Tensor shape.
        names: The initializer's name in each graph, by graph role.
    """

    role: str
    dtype: str
    shape: list[int]
    names: dict[str, str]


@dataclass(frozen=True)
class SpecialTokens:
    """Special token ids of the model."""

    pad: int = 0
    eos: int = 1
    decoder_start: int = 0


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime knows about an artifact.

    Attributes:
        format_version: Version of this schema; the runtime refuses newer ones.
        model_name: Where the weights came from (checkpoint folder or hub name).
        files: File entries by role (`encoder`, `decoder`, `tokenizer`, ...).
        dims: Model dimensions.
        special_tokens: pad / eos / decoder start ids.
        tokenizer_vocab_size: Size of `tokenizer.json`'s vocabulary, added tokens included.
        prompt_template: Template with one `{question}` field, copied from training.
        max_input_tokens: Prompt tokens kept (longer prompts are truncated with a warning).
        max_answer_tokens: Longest answer the model was trained for.
        generation: Default generation options (`GenerationOptions` fields).
        clean_up_tokenization_spaces: Whether decoding removes spaces before punctuation.
        quantization: Settings used to quantize, or None for float graphs.
        versions: Versions of the packages that built the artifact.
        parity: The parity report recorded at export, or None.
        shared_tensors: Weights both graphs use, stored once.
    """

    files: dict[str, FileEntry]
    dims: ModelDims
    format_version: int = FORMAT_VERSION
    model_name: str = ""
    special_tokens: SpecialTokens = field(default_factory=SpecialTokens)
    tokenizer_vocab_size: int = 0
    prompt_template: str = "Please answer this question: {question}"
    max_input_tokens: int = 128
    max_answer_tokens: int = 512
    generation: dict[str, Any] = field(default_factory=dict)
    clean_up_tokenization_spaces: bool = True
    quantization: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    shared_tensors: list[SharedTensor] = field(default_factory=list)

    def describe(self) -> str:
        """A human-readable summary, as `edgeqa info` prints it."""
        d = self.dims
        size = sum(entry.size for entry in self.files.values())
        lines = [
            f"model           {self.model_name}",
            f"format          {self.format_version} (edgeqa {self.versions.get('edgeqa', '?')}, "
            f"onnxruntime {self.versions.get('onnxruntime', '?')})",
            f"shape           {d.num_layers}+{d.num_decoder_layers} layers, {d.num_heads} heads x {d.d_kv}, "
            f"d_model {d.d_model}, vocab {d.vocab_size}",
            f"size            {size / 1e6:.1f} MB in {len(self.files)} files",
        ]
        lines += [f"  {role:<17} {e.path} ({e.size / 1e6:.1f} MB)" for role, e in self.files.items()]
        if self.quantization:
            q = self.quantization
            layout = (
                f"blocks of {q.get('block_size')}"
                if q.get("method") == "weight-only-int4"
                else f"per-channel {q.get('per_channel')}, reduce-range {q.get('reduce_range')}"
            )
            lines.append(
                f"quantization    {q.get('method')} preset {q.get('preset')}, {layout}, "
                f"float nodes: {','.join(q.get('keep_fp32', [])) or 'none'}"
            )
        else:
            lines.append("quantization    none (float32)")
        lines += [
            f"shared          {self.files[t.role].path}: {t.dtype} {'x'.join(map(str, t.shape))}, "
            f"one tensor for {' and '.join(t.names)}"
            for t in self.shared_tensors
        ]
        lines += [
            f"prompt          {self.prompt_template!r}",
            f"limits          {self.max_input_tokens} input tokens, {self.max_answer_tokens} answer tokens",
            f"generation      {self.generation}",
        ]
        if self.parity:
            p = self.parity
            lines.append(
                f"parity          {'PASS' if p['passed'] else 'FAIL'} on {p['samples']} questions: ROUGE-L "
                f"{p['reference_rouge']['rougeL'] * 100:.2f} (PyTorch) vs {p['artifact_rouge']['rougeL'] * 100:.2f}, "
                f"identical answers {p['exact_match'] * 100:.1f}%, latency {p['reference_ms']:.1f} vs "
                f"{p['artifact_ms']:.1f} ms"
            )
        else:
            lines.append("parity          not checked")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("format_version")
        if not isinstance(version, int):
            raise ArtifactError("manifest.json has no integer format_version; re-export the artifact")
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"manifest format {version} is newer than this edgeqa supports ({FORMAT_VERSION}); "
                "upgrade edgeqa or re-export"
            )
        if version < FORMAT_VERSION:
            raise ArtifactError(
                f"manifest format {version} is from an older edgeqa (this one reads {FORMAT_VERSION}); "
                "re-export the checkpoint with `edgeqa export`"
            )
        try:
            files = {role: FileEntry(**entry) for role, entry in data["files"].items()}
            fields = dict(data, files=files, dims=ModelDims(**data["dims"]))
            fields["special_tokens"] = SpecialTokens(**data.get("special_tokens", {}))
            fields["shared_tensors"] = [SharedTensor(**entry) for entry in data.get("shared_tensors", [])]
            manifest = cls(**fields)
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"manifest.json is malformed ({e}); re-export the artifact") from e
        missing = [role for role in REQUIRED_ROLES if role not in manifest.files]
        missing += [shared.role for shared in manifest.shared_tensors if shared.role not in manifest.files]
        if missing:
            raise ArtifactError(f"manifest.json lists no file for {', '.join(missing)}; re-export the artifact")
        return manifest

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """Read and validate `folder/manifest.json`."""
        path = Path(folder) / MANIFEST_NAME
        if not Path(folder).is_dir():
            raise ArtifactError(f"artifact folder {folder} does not exist; pass the folder `edgeqa export` wrote")
        if not path.is_file():
            raise ArtifactError(f"{folder} has no {MANIFEST_NAME}: it is not an edgeqa artifact (run `edgeqa export`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{path} is not valid JSON ({e}); re-export the artifact") from e
        if not isinstance(data, dict):
            raise ArtifactError(f"{path} does not hold a JSON object; re-export the artifact")
        return cls.from_dict(data)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    def verify_files(self, folder: Path, checksums: bool = True) -> None:
        """Check that the folder holds exactly the listed files, with their sizes and digests.

        Raises:
            ArtifactError: naming the first missing, extra, resized or corrupted file.
        """
        folder = Path(folder)
        listed = {entry.path for entry in self.files.values()} | {MANIFEST_NAME}
        present = {p.name for p in folder.iterdir()}
        extra = sorted(present - listed)
        if extra:
            raise ArtifactError(
                f"artifact {folder} holds files its manifest does not list: {', '.join(extra)}; "
                "remove them or re-export"
            )
        for role, entry in self.files.items():
            path = folder / entry.path
            if not path.is_file():
                raise ArtifactError(f"artifact {folder} is missing {entry.path} ({role}); re-export the artifact")
            size = path.stat().st_size
            if size != entry.size:
                raise ArtifactError(
                    f"{entry.path} in {folder} has {size} bytes, the manifest says {entry.size}: "
                    "the file is truncated or replaced; re-export the artifact"
                )
            if checksums and sha256_of(path) != entry.sha256:
                raise ArtifactError(
                    f"{entry.path} in {folder} does not match its sha256 in the manifest: the file is corrupted; "
                    "re-export or copy the artifact again"
                )


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(folder: Path, name: str) -> FileEntry:
    path = Path(folder) / name
    return FileEntry(path=name, size=path.stat().st_size, sha256=sha256_of(path))
