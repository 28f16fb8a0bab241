"""`ExportConfig` and the quantization settings: what `edgeqa export` does, validated before any
work starts (stdlib only, so the CLI checks flags without loading torch or Optimum)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgeqa.checkpoint import checkpoint_location
from edgeqa.cpu import detect_preset, this_cpu
from edgeqa.errors import ConfigError
from edgeqa.export.nodes import EMBEDDING_NAMES
from edgeqa.manifest import ActivationGranularity, FallbackMode, Preset, QuantizationRecord, QuantMethod, WeightType
from edgeqa.prompt import MAX_TOKENS, check_count
from edgeqa.runtime.inputs import check_threads
from edgeqa.typed_json import check_types, parse_choice, whole_number

# int4: one scale per 128 weights along the input dimension; products computed in int8.
INT4_BLOCK_SIZE = 128
INT4_ACCURACY_LEVEL = 4
# The parts of the exported graphs' node names (`/decoder/block.0/layer.2/DenseReluDense/wo/MatMul`)
# that `keep_fp32` can name.
NODE_PARTS = frozenset(
    "encoder decoder lm_head SelfAttention EncDecAttention DenseReluDense q k v o wi wi_0 wi_1 wo MatMul Gather".split()
) | frozenset(EMBEDDING_NAMES)
_NUMBERED_PART = re.compile(r"(block|layer)\.\d+")
#: The outlier search tunes on half of the gate's questions and confirms on the other half.
MIN_SEARCH_QUESTIONS = 2
#: The gate's questions and the most answer tokens it compares, unless told otherwise.
PARITY_SAMPLES = 200
PARITY_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class ExportConfig:
    """What `edgeqa export` does.

    Attributes:
        checkpoint: A T5 checkpoint folder (e.g. `finetune`'s `final/`) or hub name.
        output: The artifact folder to create.
        quantize: Unset for float graphs; int8 (a bare --quantize too) for dynamic int8 weights (about 4x
            smaller), int4 for weight-only int4 (about 6x smaller, faster at batch 1, slower in batches;
            needs onnxruntime 1.20+ where it runs).
        preset: CPU family the quantization targets; auto reads this CPU's flags.
        keep_fp32: Node-name parts to keep in float when quantizing, e.g. lm_head,wo.
        fallback: When the quantized graphs fail the parity gate: auto smooths activation
            outliers into the weights, then keeps the node groups that cost most in float
            (measured, within 25% of the weights); smooth or float does one of the two; none
            fails the export as the gate says.
        parity: Run the parity gate against the checkpoint.
        parity_data: Held-out questions (JSONL/CSV) for the gate; default: the checkpoint's
            held-out split, else the bundled validation sample.
        parity_samples: Questions the gate answers.
        parity_max_new_tokens: Answer length during the gate.
        allow_parity_failure: Write the artifact even if the gate fails.
        force: Replace an earlier artifact at `output` (never a folder that is not one).
        threads: Runtime threads during the gate (default: physical cores).
        max_input_tokens: The artifact's input limit in tokens (default: training's `max_source_tokens`;
            128 for checkpoints not from `edgeqa finetune`). FLAN-T5 reads 512: give 512 to read
            passages with a hub checkpoint.
    """

    checkpoint: str
    output: Path
    quantize: WeightType | None = None
    preset: Preset = Preset.AUTO
    keep_fp32: tuple[str, ...] = ()
    fallback: FallbackMode = FallbackMode.AUTO
    parity: bool = True
    parity_data: Path | None = None
    parity_samples: int = PARITY_SAMPLES
    parity_max_new_tokens: int = PARITY_MAX_NEW_TOKENS
    allow_parity_failure: bool = False
    force: bool = False
    threads: int | None = None
    max_input_tokens: int | None = None

    @property
    def searches(self) -> bool:
        """Whether a failing gate starts the outlier search (quantized graphs, gate on, a fallback mode)."""
        return bool(self.quantize) and self.parity and self.fallback != FallbackMode.NONE

    def __post_init__(self) -> None:
        check_types(self, ConfigError)  # strings become the enums here, or a ConfigError naming the valid values
        if self.keep_fp32 and not self.quantize:
            raise ConfigError("keep_fp32 only applies with quantize (--keep-fp32 needs --quantize)")
        unknown = [part for part in self.keep_fp32 if part not in NODE_PARTS and not _NUMBERED_PART.fullmatch(part)]
        if unknown:
            raise ConfigError(
                f"keep_fp32 {','.join(unknown)} names no part of T5's graphs; use parts such as "
                "lm_head, wo, wi_0, wi_1, q, k, v, o, EncDecAttention or block.3"
            )
        for name in ("parity_samples", "parity_max_new_tokens"):
            whole_number(getattr(self, name), name, 1, error=ConfigError)
        if self.searches and self.parity_samples < MIN_SEARCH_QUESTIONS:
            raise ConfigError(
                f"parity_samples must be at least {MIN_SEARCH_QUESTIONS} for the outlier search, which tunes on "
                f"half and confirms on the other half; got {self.parity_samples} (or --fallback none)"
            )
        if self.threads is not None:
            check_threads(self.threads)  # as the gate's runtime takes them, before anything is built
        if self.max_input_tokens is not None:
            check_count("max_input_tokens", self.max_input_tokens, MAX_TOKENS)
        if self.parity_data is not None and not Path(self.parity_data).is_file():
            raise ConfigError(f"parity_data {self.parity_data} is not a file; pass a JSONL or CSV of questions")
        object.__setattr__(self, "checkpoint", checkpoint_location(self.checkpoint))


@dataclass(frozen=True)
class QuantizeSettings:
    """How weights are quantized.

    Attributes:
        preset: CPU family the settings target.
        per_channel: One scale per output channel instead of one per tensor.
        reduce_range: 7-bit weights, so that u8 x s8 products cannot saturate int16 sums on
            CPUs without VNNI (AVX2 / AVX-512 `vpmaddubsw`).
        op_types: ONNX ops quantized: weight MatMuls (activation x activation products of
            attention stay float) and the embedding Gather.
        keep_fp32: Node-name components left in float (e.g. `lm_head`, `wo`).
        bits: 8 (dynamic int8) or 4 (weight-only int4; per_channel and reduce_range unused).
        block_size: int4 weights sharing one scale, along the input dimension.
        activation_granularity: How int8 activations are quantized: one scale per token row
            (a row's result does not depend on its batch or its padding) or one per tensor
            (onnxruntime's `quantize_dynamic` as it comes). int4's `MatMulNBits` always
            quantizes per token row, in blocks of `block_size`.
    """

    preset: Preset
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul", "Gather")
    keep_fp32: tuple[str, ...] = ()
    bits: int = 8
    block_size: int = INT4_BLOCK_SIZE
    activation_granularity: ActivationGranularity = ActivationGranularity.PER_TOKEN

    def __post_init__(self) -> None:
        check_types(self, ConfigError)

    @property
    def weight_type(self) -> WeightType:
        return WeightType.INT4 if self.bits == 4 else WeightType.INT8

    def record(self) -> QuantizationRecord:
        """The manifest's account of these settings."""
        common = dict(
            preset=self.preset, op_types=list(self.op_types), keep_fp32=list(self.keep_fp32), export_cpu=this_cpu()
        )
        if self.weight_type is WeightType.INT4:
            return QuantizationRecord(
                method=QuantMethod.WEIGHT_ONLY_INT4,
                weight_type=WeightType.INT4,
                block_size=self.block_size,
                accuracy_level=INT4_ACCURACY_LEVEL,
                activation_granularity=f"{ActivationGranularity.PER_TOKEN}, blocks of {self.block_size}",
                **common,  # type: ignore[arg-type]
            )
        return QuantizationRecord(
            method=QuantMethod.DYNAMIC_INT8,
            weight_type=WeightType.INT8,
            activation_type="uint8",
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            activation_granularity=self.activation_granularity,
            **common,  # type: ignore[arg-type]
        )


def settings_for(
    preset: str = Preset.AUTO,
    keep_fp32: tuple[str, ...] = (),
    method: str = WeightType.INT8,
    activation_granularity: str = ActivationGranularity.PER_TOKEN,
) -> QuantizeSettings:
    """The quantization settings for a `Preset` (auto: this CPU's), a `WeightType` and an
    `ActivationGranularity`, given as the enums or their strings.

    Raises:
        ConfigError: a value is not one of its enum's, naming the valid ones.
    """
    weight_type = parse_choice(WeightType, method, "quantization", ConfigError)
    target = parse_choice(Preset, preset, "quantization preset", ConfigError)
    if target is Preset.AUTO:
        target = Preset(detect_preset())
    # Without VNNI, int8 dot products go through saturating 16-bit adds: use 7-bit weights.
    reduce_range = target in (Preset.AVX2, Preset.AVX512) and weight_type is WeightType.INT8
    return QuantizeSettings(
        preset=target,
        per_channel=True,
        reduce_range=reduce_range,
        keep_fp32=tuple(keep_fp32),
        bits=4 if weight_type is WeightType.INT4 else 8,
        activation_granularity=parse_choice(
            ActivationGranularity, activation_granularity, "activation granularity", ConfigError
        ),
    )
