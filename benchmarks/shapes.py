"""Benchmark models: flan-t5-small/base-shaped T5s from their public configs, seeded random weights,
exported once per shape (fp32 and int8 artifacts, a CTranslate2 int8 model) into a cache folder."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from edgeqa.records import BUNDLED_TOKENIZER

logger = logging.getLogger(__name__)

# google/flan-t5-small and google/flan-t5-base config.json (architecture fields).
SHAPES: dict[str, dict[str, int]] = {
    "small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
    "base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12),
}


def build_checkpoint(shape: str, folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=32128,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        relative_attention_num_buckets=32,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        **SHAPES[shape],
    )
    T5ForConditionalGeneration(config).save_pretrained(folder)
    T5TokenizerFast.from_pretrained(BUNDLED_TOKENIZER).save_pretrained(folder)
    return folder


def prepare(shape: str, cache: Path, ctranslate2: bool = True) -> dict[str, Path]:
    """Checkpoint, fp32 and int8 artifacts and (if installed) a CTranslate2 int8 model for one shape."""
    from edgeqa.export import ExportConfig, export_artifact

    root = cache / shape
    paths = {
        "checkpoint": root / "checkpoint",
        "fp32": root / "edgeqa-fp32",
        "int8": root / "edgeqa-int8",
        "ct2": root / "ct2-int8",
    }
    if not (paths["checkpoint"] / "config.json").exists():
        logger.info("bench: building the %s-shaped checkpoint", shape)
        build_checkpoint(shape, paths["checkpoint"])
    for kind, quantize in (("fp32", None), ("int8", "int8")):
        if not (paths[kind] / "manifest.json").exists():
            logger.info("bench: exporting %s %s", shape, kind)
            export_artifact(
                ExportConfig(
                    checkpoint=str(paths["checkpoint"]), output=paths[kind], quantize=quantize, parity=False, force=True
                )
            )
    if ctranslate2 and not (paths["ct2"] / "model.bin").exists():
        try:
            from ctranslate2.converters import TransformersConverter
        except ImportError:
            paths.pop("ct2")
        else:
            logger.info("bench: converting %s to CTranslate2 int8", shape)
            shutil.rmtree(paths["ct2"], ignore_errors=True)
            TransformersConverter(str(paths["checkpoint"])).convert(str(paths["ct2"]), quantization="int8")
    return paths
