"""`manifest.json`: the one contract between export and the runtime.

The writer (`edgeqa.export`) and the reader (`edgeqa.runtime`) share these definitions. The
runtime finds every file through the manifest, never by matching names. Every record is a
frozen dataclass, and reading checks each value against its field's type, so a wrong key or
type is an `ArtifactError` here instead of a `KeyError` deep in the runtime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeqa import artifact_checks
from edgeqa.errors import ArtifactError
from edgeqa.prompt import DEFAULT_MAX_ANSWER_TOKENS, DEFAULT_MAX_INPUT_TOKENS, PROMPT_TEMPLATE
from edgeqa.typed_json import read_record

# 3: typed quantization, parity and generation records (parity's `exact_match` is now
#    `identical_answers`, with exact match against the references beside it).
# 2: the encoder graph returns the cross-attention cache and one decoder graph runs every step
#    (1 had Optimum's merged decoder).
FORMAT_VERSION = 4
#: Format 3 lacks only fields that have defaults (the outlier search and the export CPU).
OLDEST_READABLE_FORMAT = 3
MANIFEST_NAME = "manifest.json"
#: Roles the runtime needs; other roles (the model's config files) are listed for checksums only.
REQUIRED_ROLES = ("encoder", "decoder", "tokenizer")
INT8_METHOD = "dynamic-int8"
INT4_METHOD = "weight-only-int4"


#: The first dimension of a decoder graph's cross-cache and encoder-mask inputs where it reads one
#: row a question, shared by the question's beams (`export/shared_cross_cache.py`); else one a row.
QUESTIONS_DIM = "questions"


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
class GenerationDefaults:
    """The artifact's default generation options (fields of the runtime's `GenerationOptions`),
    taken from the settings training evaluated with.

    Attributes:
        max_new_tokens: Most answer tokens.
        num_beams: 1 for greedy; more for beam search.
    """

    max_new_tokens: int = 256
    num_beams: int = 1


@dataclass(frozen=True)
class SmoothingRecord:
    """One activation whose outlier channels were moved into the weights before quantizing.

    Attributes:
        activation: Where it is read, e.g. `decoder/block.0/layer.2 wo input`.
        channels: Channels rescaled.
        max_scale: The largest scale (a power of two).
    """

    activation: str
    channels: int
    max_scale: int


@dataclass(frozen=True)
class FloatGroupRecord:
    """Nodes left in float by the accuracy-aware fallback, and why.

    Attributes:
        group: The activation they read, e.g. `decoder/block.1/layer.2 wo` or `lm_head`.
        modules: Projections (MatMul or Gather weights) left in float.
        parameters: Weights left in float.
        error_reduction: Share of the worst tuning questions' logit error that goes away with this
            group alone in float (the search's ranking figure).
    """

    group: str
    modules: int
    parameters: int
    error_reduction: float


@dataclass(frozen=True)
class GateAttempt:
    """One candidate the export's search put through the parity gate.

    Attributes:
        name: e.g. `int8`, `int8 + smoothing`, `int8 + smoothing + 2 groups float`.
        questions: `tuning` or `confirmation`, and how many.
        rouge_l_delta: Artifact ROUGE-L minus PyTorch ROUGE-L.
        exact_match_delta: Artifact exact match minus PyTorch exact match.
        identical_answers: Share of token-identical answers.
        passed: Whether the gate passed.
    """

    name: str
    questions: str
    rouge_l_delta: float
    exact_match_delta: float
    identical_answers: float
    passed: bool


@dataclass(frozen=True)
class OutlierSearch:
    """What the export did to pass the gate without node names from the user.

    Attributes:
        mode: `auto` (smoothing, then float fallback), `smooth`, `fallback` or `none`.
        smoothing: Activations smoothed (empty: none was needed, or it did not help).
        float_groups: Node groups left in float by the fallback, in ranking order.
        float_share: Share of the quantizable weights left in float.
        attempts: Every gate run, in order.
        seconds: Time the search took beyond the first candidate.
    """

    mode: str
    smoothing: list[SmoothingRecord] = field(default_factory=list)
    float_groups: list[FloatGroupRecord] = field(default_factory=list)
    float_share: float = 0.0
    attempts: list[GateAttempt] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        smoothed = sum(s.channels for s in self.smoothing)
        parts = [f"{smoothed} channels in {len(self.smoothing)} activations smoothed" if smoothed else "no smoothing"]
        if self.float_groups:
            names = ", ".join(g.group for g in self.float_groups)
            parts.append(f"{len(self.float_groups)} groups float ({self.float_share * 100:.1f}% of weights: {names})")
        else:
            parts.append("no fallback")
        parts.append(f"{len(self.attempts)} gate runs, {self.seconds:.0f} s")
        return "; ".join(parts)


@dataclass(frozen=True)
class CpuRecord:
    """The CPU an int8 artifact was exported on.

    Attributes:
        machine: `platform.machine()` (x86_64, arm64, ...).
        vnni: Whether it has VNNI (AVX-VNNI or AVX512-VNNI): int8 products without 16-bit saturation.
    """

    machine: str
    vnni: bool


@dataclass(frozen=True)
class QuantizationRecord:
    """How the graphs were quantized.

    Attributes:
        method: `dynamic-int8` or `weight-only-int4`.
        weight_type: `int8` or `int4`.
        preset: CPU family the settings target (avx2, avx512, avx512_vnni, arm64).
        op_types: ONNX ops quantized.
        keep_fp32: Node-name parts left in float.
        activation_type: int8: activations are quantized on the fly to this type.
        per_channel: int8: one weight scale per output channel.
        reduce_range: int8: 7-bit weights, for CPUs without VNNI.
        block_size: int4: weights sharing one scale, along the input dimension.
        accuracy_level: int4: onnxruntime's MatMulNBits compute type (4: int8 products).
        activation_granularity: How activations are quantized: "per-token" (one scale per token
            row: a row's result does not depend on its batch or padding), "per-tensor" (one
            scale for the whole batch; None in artifacts written before this was recorded), or
            for int4 "per-token, blocks of N".
        outliers: What the export's search did (smoothing, float fallback, gate runs), or None
            where none ran (`--fallback none`, no gate, artifacts before format 4).
        export_cpu: The CPU the export ran on (None before format 4).
    """

    method: str
    weight_type: str
    preset: str
    op_types: list[str]
    keep_fp32: list[str] = field(default_factory=list)
    activation_type: str | None = None
    per_channel: bool | None = None
    reduce_range: bool | None = None
    block_size: int | None = None
    accuracy_level: int | None = None
    activation_granularity: str | None = None
    outliers: OutlierSearch | None = None
    export_cpu: CpuRecord | None = None

    @property
    def is_int4(self) -> bool:
        return self.method == INT4_METHOD

    def summary(self) -> str:
        layout = (
            f"blocks of {self.block_size}"
            if self.is_int4
            else f"per-channel {self.per_channel}, reduce-range {self.reduce_range}"
        )
        layout += f", activations {self.activation_granularity or 'per-tensor'}"
        return f"{self.method} preset {self.preset}, {layout}, float nodes: {','.join(self.keep_fp32) or 'none'}"


@dataclass(frozen=True)
class ParityRecord:
    """The PyTorch checkpoint (`reference`) against the artifact on the same held-out questions.

    Attributes:
        samples: Questions answered by both.
        quantized: Whether the artifact is quantized (which sets the gate).
        reference_rouge: ROUGE-1/2/L/Lsum of the reference's answers against the references.
        artifact_rouge: The same for the artifact's answers.
        rouge_l_delta: Artifact ROUGE-L minus reference ROUGE-L.
        identical_answers: Share of questions whose two answers are token-identical.
        token_agreement: Share of answer positions where both chose the same token.
        reference_exact_match: Share of the reference's answers equal to the reference answer
            (after normalisation: case, punctuation, articles, white space).
        artifact_exact_match: The same for the artifact's answers.
        reference_ms: Mean latency per question of the reference (batched), milliseconds.
        artifact_ms: The same for the artifact.
        passed: Whether the gate passed.
        gate: The rule applied.
        max_new_tokens: Answer length limit of both.
        split: Which parity questions: `all`, or the export search's `tuning` or `confirmation` half.
    """

    samples: int
    quantized: bool
    reference_rouge: dict[str, float]
    artifact_rouge: dict[str, float]
    rouge_l_delta: float
    identical_answers: float
    token_agreement: float
    reference_exact_match: float
    artifact_exact_match: float
    reference_ms: float
    artifact_ms: float
    passed: bool
    gate: str
    max_new_tokens: int
    split: str = "all"

    def table(self) -> str:
        """A Markdown table of the figures and the verdict."""
        rows = ["| metric | PyTorch | artifact | difference |", "| --- | --- | --- | --- |"]
        for key, value in self.reference_rouge.items():
            other = self.artifact_rouge.get(key, 0.0)
            rows.append(f"| {key} | {value * 100:.2f} | {other * 100:.2f} | {(other - value) * 100:+.2f} |")
        em, em_artifact = self.reference_exact_match, self.artifact_exact_match
        rows.append(f"| exact match % | {em * 100:.1f} | {em_artifact * 100:.1f} | {(em_artifact - em) * 100:+.1f} |")
        rows.append(
            f"| mean latency ms | {self.reference_ms:.1f} | {self.artifact_ms:.1f} | "
            f"x{self.reference_ms / max(self.artifact_ms, 1e-9):.2f} faster |"
        )
        return "\n".join(rows) + (
            f"\n\n{self.samples} questions ({self.split}), {self.max_new_tokens} new tokens at most; identical answers "
            f"{self.identical_answers * 100:.1f}%, token agreement {self.token_agreement * 100:.1f}%; "
            f"gate ({self.gate}): {'PASS' if self.passed else 'FAIL'}"
        )

    def summary(self) -> str:
        return (
            f"{'PASS' if self.passed else 'FAIL'} on {self.samples} questions: ROUGE-L "
            f"{self.reference_rouge.get('rougeL', 0.0) * 100:.2f} (PyTorch) vs "
            f"{self.artifact_rouge.get('rougeL', 0.0) * 100:.2f}, exact match "
            f"{self.reference_exact_match * 100:.1f}% vs {self.artifact_exact_match * 100:.1f}%, identical answers "
            f"{self.identical_answers * 100:.1f}%, latency {self.reference_ms:.1f} vs {self.artifact_ms:.1f} ms"
        )


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
        generation: Default generation options.
        clean_up_tokenization_spaces: Whether decoding removes spaces before punctuation.
        quantization: How the graphs were quantized, or None for float graphs.
        versions: Versions of the packages that built the artifact.
        parity: The parity record of the export's gate, or None.
        shared_tensors: Weights both graphs use, stored once.
    """

    files: dict[str, FileEntry]
    dims: ModelDims
    format_version: int = FORMAT_VERSION
    model_name: str = ""
    special_tokens: SpecialTokens = field(default_factory=SpecialTokens)
    tokenizer_vocab_size: int = 0
    prompt_template: str = PROMPT_TEMPLATE
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS
    max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    clean_up_tokenization_spaces: bool = True
    quantization: QuantizationRecord | None = None
    versions: dict[str, str] = field(default_factory=dict)
    parity: ParityRecord | None = None
    shared_tensors: list[SharedTensor] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Size of the artifact's files, manifest excluded."""
        return sum(entry.size for entry in self.files.values())

    def describe(self) -> str:
        """A human-readable summary, as `edgeqa info` prints it."""
        d = self.dims
        lines = [
            f"model           {self.model_name}",
            f"format          {self.format_version} (edgeqa {self.versions.get('edgeqa', '?')}, "
            f"onnxruntime {self.versions.get('onnxruntime', '?')})",
            f"shape           {d.num_layers}+{d.num_decoder_layers} layers, {d.num_heads} heads x {d.d_kv}, "
            f"d_model {d.d_model}, vocab {d.vocab_size}",
            f"size            {self.total_bytes / 1e6:.1f} MB in {len(self.files)} files",
        ]
        lines += [f"  {role:<17} {e.path} ({e.size / 1e6:.1f} MB)" for role, e in self.files.items()]
        q = self.quantization
        lines.append(f"quantization    {q.summary() if q else 'none (float32)'}")
        if q and q.outliers:
            lines.append(f"outliers        {q.outliers.mode}: {q.outliers.summary()}")
        if q and q.export_cpu:
            lines.append(f"exported on     {q.export_cpu.machine}, VNNI {'yes' if q.export_cpu.vnni else 'no'}")
        lines += [
            f"shared          {self.files[t.role].path}: {t.dtype} {'x'.join(map(str, t.shape))}, "
            f"one tensor for {' and '.join(t.names)}"
            for t in self.shared_tensors
        ]
        g = self.generation
        lines += [
            f"prompt          {self.prompt_template!r}",
            f"limits          {self.max_input_tokens} input tokens, {self.max_answer_tokens} answer tokens",
            f"generation      max_new_tokens {g.max_new_tokens}, num_beams {g.num_beams}",
            f"parity          {self.parity.summary() if self.parity else 'not checked'}",
        ]
        return "\n".join(lines)

    def to_json(self) -> str:
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
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
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


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_entry(folder: Path, name: str) -> FileEntry:
    path = Path(folder) / name
    return FileEntry(path=name, size=path.stat().st_size, sha256=sha256_of(path))
