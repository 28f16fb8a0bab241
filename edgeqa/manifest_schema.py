"""The schema of `manifest.json`: the one contract between export and the runtime (stdlib only).

The writer (`edgeqa.export`) and the reader (`edgeqa.runtime`) share these definitions; reading,
checking and writing the file is `edgeqa.manifest`, which re-exports everything here. Every
record is a frozen dataclass; a value from a fixed set is a `StrEnum`, which is stored as its
string and compares equal to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from edgeqa.prompt import (
    CONTEXT_TEMPLATE,
    DEFAULT_MAX_ANSWER_TOKENS,
    DEFAULT_MAX_INPUT_TOKENS,
    NO_ANSWER,
    PROMPT_TEMPLATE,
)

# 5: `context_template`, the form of a question with a passage to read, and `no_answer`, what the reader
#    says when the passage does not answer (4 reads as FLAN's own).
# 4: the export's CPU and the outlier search's record.
# 3: typed quantization, parity and generation records (parity's `exact_match` is now
#    `identical_answers`, with exact match against the references beside it).
# 2: the encoder graph returns the cross-attention cache and one decoder graph runs every step
#    (1 had Optimum's merged decoder).
FORMAT_VERSION = 5
#: Formats 3 and 4 lack only fields that have defaults (the outlier search, the export CPU, the context template).
OLDEST_READABLE_FORMAT = 3
MANIFEST_NAME = "manifest.json"
#: Roles the runtime needs; other roles (the model's config files) are listed for checksums only.
REQUIRED_ROLES = ("encoder", "decoder", "tokenizer")


#: The first dimension of a decoder graph's cross-cache and encoder-mask inputs where it reads one
#: row a question, shared by the question's beams (`export/shared_cross_cache.py`); else one a row.
QUESTIONS_DIM = "questions"


def cache_names(layers: int, attention: str) -> list[str]:
    """The graphs' cache tensors, key and value of each decoder layer; `attention` is "decoder" (self)
    or "encoder" (cross). Graph inputs carry them after "past_key_values.", outputs after "present."."""
    return [f"{layer}.{attention}.{kv}" for layer in range(layers) for kv in ("key", "value")]


class WeightType(StrEnum):
    """The quantized weights' number format: `edgeqa export --quantize`'s values."""

    INT8 = "int8"
    INT4 = "int4"


class QuantMethod(StrEnum):
    """How the weights were quantized: dynamic int8 (activations quantized on the fly) or
    weight-only int4 (onnxruntime's MatMulNBits)."""

    DYNAMIC_INT8 = "dynamic-int8"
    WEIGHT_ONLY_INT4 = "weight-only-int4"


class ActivationGranularity(StrEnum):
    """How int8 activations are quantized: one scale per token row (a row's result does not depend
    on its batch or its padding) or one per tensor (onnxruntime's `quantize_dynamic` as it comes)."""

    PER_TENSOR = "per-tensor"
    PER_TOKEN = "per-token"


class Preset(StrEnum):
    """The CPU family quantization targets; AUTO (an export option only) reads this CPU's flags."""

    AUTO = "auto"
    AVX2 = "avx2"
    AVX512 = "avx512"
    AVX512_VNNI = "avx512_vnni"
    ARM64 = "arm64"


class FallbackMode(StrEnum):
    """What the export may do when quantized graphs fail the parity gate (`export.search`): smooth
    outlier channels then keep the costliest node groups float, one of the two, or fail."""

    AUTO = "auto"
    SMOOTH = "smooth"
    FLOAT = "float"
    NONE = "none"


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
        mode: The export's `--fallback`: auto (smoothing, then float fallback), smooth, float or none.
        smoothing: Activations smoothed (empty: none was needed, or it did not help).
        float_groups: Node groups left in float by the fallback, in ranking order.
        float_share: Share of the quantizable weights left in float.
        attempts: Every gate run, in order.
        seconds: Time the search took beyond the first candidate.
    """

    mode: FallbackMode
    smoothing: list[SmoothingRecord] = field(default_factory=list)
    float_groups: list[FloatGroupRecord] = field(default_factory=list)
    float_share: float = 0.0
    attempts: list[GateAttempt] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for people (`edgeqa.cli_display.outliers_summary`)."""
        from edgeqa.cli_display import outliers_summary  # display lives with the CLI

        return outliers_summary(self)


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
        method: How the weights were quantized.
        weight_type: The weights' number format.
        preset: CPU family the settings target (never auto: the export resolves it).
        op_types: ONNX ops quantized.
        keep_fp32: Node-name parts left in float.
        activation_type: int8: activations are quantized on the fly to this type.
        per_channel: int8: one weight scale per output channel.
        reduce_range: int8: 7-bit weights, for CPUs without VNNI.
        block_size: int4: weights sharing one scale, along the input dimension.
        accuracy_level: int4: onnxruntime's MatMulNBits compute type (4: int8 products).
        activation_granularity: How activations are quantized: for int8 an
            `ActivationGranularity` value (None in artifacts written before this was recorded),
            for int4 "per-token, blocks of N".
        outliers: What the export's search did (smoothing, float fallback, gate runs), or None
            where none ran (`--fallback none`, no gate, artifacts before format 4).
        export_cpu: The CPU the export ran on (None before format 4).
    """

    method: QuantMethod
    weight_type: WeightType
    preset: Preset
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
        return self.method == QuantMethod.WEIGHT_ONLY_INT4


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
        """A Markdown table of the figures and the verdict (`edgeqa.cli_display.parity_table`)."""
        from edgeqa.cli_display import parity_table  # display lives with the CLI

        return parity_table(self)


@dataclass(frozen=True)
class ManifestRecord:
    """Everything the runtime knows about an artifact: the fields of `edgeqa.manifest.Manifest`,
    which adds reading and writing.

    Attributes:
        format_version: Version of this schema; the runtime refuses newer ones.
        model_name: Where the weights came from (checkpoint folder or hub name).
        files: File entries by role (`encoder`, `decoder`, `tokenizer`, ...).
        dims: Model dimensions.
        special_tokens: pad / eos / decoder start ids.
        tokenizer_vocab_size: Size of `tokenizer.json`'s vocabulary, added tokens included.
        prompt_template: Template with one `{question}` field, copied from training.
        context_template: Template with one `{context}` and one `{question}` field, for a question with a
            passage to read: training's, or FLAN's reading template for a checkpoint trained without passages.
        no_answer: What the reader answers from a passage that does not answer the question; reading
            several passages, it passes over them.
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
    context_template: str = CONTEXT_TEMPLATE
    no_answer: str = NO_ANSWER
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
