"""Benchmark models: flan-t5-small/base-shaped T5s from their public configs, seeded random weights,
exported once per shape (fp32 and int8 artifacts, Optimum's int8 layout, a CTranslate2 int8 model)
into a cache folder."""

from __future__ import annotations

import hashlib
import logging
import shutil
from importlib import resources
from pathlib import Path

from edgeqa.manifest import ActivationGranularity

logger = logging.getLogger(__name__)

SHAPES = ("small", "base")


def export_fingerprint() -> str:
    """A digest of edgeqa's export code: cached artifacts made by other code are made again."""
    digest = hashlib.sha256()
    for source in sorted(resources.files("edgeqa.export").iterdir(), key=lambda f: f.name):
        if source.name.endswith(".py"):
            digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def optimum_int8(checkpoint: Path, target: Path) -> Path:
    """Optimum's own layout (encoder, merged decoder, config) with the int8 weights edgeqa's export makes:
    what `ORTModelForSeq2SeqLM` loads."""
    import tempfile

    from optimum.exporters.onnx import main_export

    from edgeqa.export.config import settings_for
    from edgeqa.export.layout import save_graph
    from edgeqa.export.quantize import quantize_graph

    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        main_export(str(checkpoint), output=raw, task="text2text-generation-with-past", do_validation=False)
        staging = raw / "int8"
        staging.mkdir()
        for role, name in (("encoder", "encoder_model.onnx"), ("decoder", "decoder_model_merged.onnx")):
            # per-tensor: the per-token rewrite does not yet handle the merged decoder's If branches
            settings = settings_for("auto", activation_granularity=ActivationGranularity.PER_TENSOR)
            quantize_graph(raw / name, raw / f"int8-{name}", settings, role)
            save_graph(raw / f"int8-{name}", staging / name)
        for name in ("config.json", "generation_config.json"):
            shutil.copy2(raw / name, staging / name)
        shutil.copytree(staging, target)
    return target


def prepare(shape: str, cache: Path, ctranslate2: bool = True, optimum: bool = True) -> dict[str, Path]:
    """Checkpoint, fp32 and int8 artifacts (int8 also with per-tensor activations, as before
    per-token) and (if installed) Optimum's int8 layout and a CTranslate2 int8 model for one shape."""
    from edgeqa.export import ExportConfig, export_artifact

    root = cache / shape
    fingerprint = export_fingerprint()
    paths = {
        "checkpoint": root / "checkpoint",
        "fp32": root / f"edgeqa-fp32-{fingerprint}",
        "int8": root / f"edgeqa-int8-{fingerprint}",
        "ct2": root / "ct2-int8",
        "optimum": root / f"optimum-int8-{fingerprint}",
        "int8-per-tensor": root / f"edgeqa-int8-per-tensor-{fingerprint}",
    }
    if not (paths["checkpoint"] / "config.json").exists():
        logger.info("bench: building the %s-shaped checkpoint", shape)
        from edgeqa.finetune.models import FLAN_T5_SHAPES, build_random_t5

        build_random_t5(paths["checkpoint"], **FLAN_T5_SHAPES[shape])
    for kind, quantize in (("fp32", None), ("int8", "int8")):
        if not (paths[kind] / "manifest.json").exists():
            logger.info("bench: exporting %s %s", shape, kind)
            export_artifact(
                ExportConfig(
                    checkpoint=str(paths["checkpoint"]), output=paths[kind], quantize=quantize, parity=False, force=True
                )
            )
    if not (paths["int8-per-tensor"] / "manifest.json").exists():
        from edgeqa.bench.levers import variant
        from edgeqa.export.config import settings_for

        logger.info("bench: quantizing %s int8 with per-tensor activations", shape)
        variant(
            paths["fp32"],
            paths["int8-per-tensor"],
            settings_for(activation_granularity=ActivationGranularity.PER_TENSOR),
        )
    if optimum and not (paths["optimum"] / "config.json").exists():
        logger.info("bench: exporting %s int8 in Optimum's layout", shape)
        optimum_int8(paths["checkpoint"], paths["optimum"])
    if not optimum:
        paths.pop("optimum")
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
