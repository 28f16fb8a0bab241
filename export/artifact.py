"""`export_artifact`: checkpoint -> ONNX graphs (optionally int8) + tokenizer + manifest, atomically."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edgeqa import __version__
from edgeqa.atomic import leftovers, owned_prefix, remove, replace_folder
from edgeqa.checkpoint import TrainingRecord, read_training_record
from edgeqa.errors import ConfigError, ExportError
from edgeqa.export.config import ExportConfig, QuantizeSettings, settings_for
from edgeqa.export.graphs import export_graphs, graph_bytes
from edgeqa.export.layout import EMBEDDING_FILE, GRAPHS, graph_entries, save_graphs, weights_file
from edgeqa.export.loading import load_config, load_tokenizer
from edgeqa.export.optimum_check import check_exporter
from edgeqa.export.parity import ParityCheck, parity_records, run_parity
from edgeqa.export.quantize import quantize_graph
from edgeqa.export.search import Build, SearchFailed, search
from edgeqa.manifest import (
    MANIFEST_NAME,
    GenerationDefaults,
    Manifest,
    ModelDims,
    ParityRecord,
    SharedTensor,
    SpecialTokens,
    file_entry,
)
from edgeqa.records import QARecord
from edgeqa.tied_weights import tie_problem

logger = logging.getLogger(__name__)

#: The temporary folders an export writes beside OUTPUT (named with its process and machine: `owned_prefix`).
WORK_STEM = ".edgeqa-export-work"
CONFIG_FILES = {"config": "config.json", "generation_config": "generation_config.json"}


@dataclass(frozen=True)
class ExportResult:
    output: Path
    manifest: Manifest
    parity: ParityRecord | None
    fp32_bytes: int


def export_artifact(config: ExportConfig) -> ExportResult:
    """Export, quantize, check parity, then move the finished folder into place.

    Nothing is written at `config.output` unless every stage succeeds (or the gate fails
    with `allow_parity_failure`).

    Raises:
        ExportError: export, quantization or the parity gate failed, or the checkpoint's tie setting
            contradicts its weights (transformers would load another model than was trained).
        ModelError: the checkpoint cannot be loaded.
        MissingExtraError: Optimum is missing or refuses the installed transformers.
    """
    check_exporter()
    problem = tie_problem(config.checkpoint) if Path(config.checkpoint).is_dir() else None
    if problem:
        raise ExportError(f"{problem}; nothing exported")
    load_config(config.checkpoint)  # a missing or non-T5 checkpoint is refused before anything is written
    # and one whose record the artifact could not carry; checkpoints not from `edgeqa finetune` get the defaults
    trained = read_training_record(config.checkpoint) or TrainingRecord(model=config.checkpoint)
    output = Path(config.output)
    check_replaceable(output, config)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging_stem = f".{output.name}.partial"
        for leftover in leftovers(output.parent, staging_stem) + leftovers(output.parent, WORK_STEM):
            remove(leftover)  # of exports killed before they could clean up
        staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=owned_prefix(staging_stem)))
    except OSError as e:
        raise ExportError(
            f"cannot write beside {output}: {e.strerror or e}; pick an OUTPUT in a writable folder"
        ) from e
    try:
        result = _build(config, trained, staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the artifact from other users and containers
        replace_folder(staging, output)
        return replace(result, output=output)
    finally:
        remove(staging)


def check_replaceable(output: Path, config: ExportConfig) -> None:
    """Refuse an OUTPUT whose replacement would lose something: anything non-empty without `force`, and
    even with it anything but an earlier artifact, or a folder holding the checkpoint being exported.

    Raises:
        ExportError: naming the problem and the way out.
    """
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if not (output / MANIFEST_NAME).is_file():
        raise ExportError(
            f"{output} already exists and is not an edgeqa artifact (no {MANIFEST_NAME}); pick another OUTPUT "
            "(--force replaces an earlier artifact only)"
        )
    if not config.force:
        raise ExportError(f"{output} already holds an artifact; pass --force to replace it")
    checkpoint = Path(config.checkpoint)
    if checkpoint.exists() and checkpoint.resolve().is_relative_to(output.resolve()):
        raise ExportError(f"{output} holds the checkpoint being exported ({config.checkpoint}); pick another OUTPUT")


def _build(config: ExportConfig, trained: TrainingRecord, staging: Path) -> ExportResult:
    settings = settings_for(config.preset, config.keep_fp32, config.quantize) if config.quantize else None
    # beside the artifact, on the disk chosen for it: a large model's float graphs may not fit in $TMPDIR
    with tempfile.TemporaryDirectory(dir=staging.parent, prefix=owned_prefix(WORK_STEM)) as work_dir:
        work = Path(work_dir)
        cleanup = _save_tokenizer(config.checkpoint, work)  # once, for every candidate
        exported: dict[str, tuple[dict[str, Path], Path]] = {}

        def build(weights: str, float_modules: frozenset[str]) -> int:
            """The artifact from these float weights, with these modules left in float, in `staging`."""
            if weights not in exported:
                raw = work / f"onnx-{len(exported)}"
                name = None if weights == config.checkpoint else "the smoothed weights"  # the search's, in `work`
                exported[weights] = export_graphs(weights, raw, name), raw
            graphs, raw = exported[weights]
            for stale in staging.iterdir():
                stale.unlink()
            kept_float = 0
            sources = {}
            for role, name in GRAPHS.items():
                sources[role] = graphs[role]
                if settings:
                    sources[role] = work / f"{config.quantize}-{name}"
                    kept_float += quantize_graph(graphs[role], sources[role], settings, role, float_modules)
            shared = save_graphs(sources, {role: staging / name for role, name in GRAPHS.items()})
            sizes = [f"{name} {_mb(staging / name, staging / weights_file(name))}" for name in GRAPHS.values()]
            if shared:
                sizes.append(f"{EMBEDDING_FILE} {_mb(staging / EMBEDDING_FILE)} (used by both graphs)")
            logger.info("export: %s", ", ".join(sizes))
            if settings and settings.keep_fp32 and not kept_float:
                raise ConfigError(
                    f"--keep-fp32 {','.join(settings.keep_fp32)} matches no node; "
                    "use node-name parts such as lm_head, wo, wi_0, wi_1, q, k, v, o"
                )
            for name in CONFIG_FILES.values():
                if (raw / name).exists():
                    shutil.copy2(raw / name, staging / name)
            shutil.copy2(work / "tokenizer.json", staging / "tokenizer.json")
            _manifest(config, trained, staging, settings, shared, cleanup).write(staging)
            return kept_float

        report: ParityRecord | None = None
        if settings and config.searches:
            report = _search(config, settings, build, staging, work)
        else:
            build(config.checkpoint, frozenset())
            if config.parity:
                report = _plain_gate(config, staging)
        fp32_bytes = sum(graph_bytes(path) for path in exported[config.checkpoint][0].values())
    return ExportResult(output=staging, manifest=Manifest.read(staging), parity=report, fp32_bytes=fp32_bytes)


def _search(config: ExportConfig, settings: QuantizeSettings, build: Build, staging: Path, work: Path) -> ParityRecord:
    """Plain quantization, else smoothing, else float fallback (`export.search`); record what happened."""
    check = ParityCheck(
        config.checkpoint, _parity_records(config), config.parity_max_new_tokens, threads=config.threads
    )
    try:
        result = search(config.fallback, config.checkpoint, check, settings, build, staging, work)
        failure = None
    except SearchFailed as e:
        result, failure = e.result, e
    manifest = Manifest.read(staging)
    quantization = replace(manifest.quantization, outliers=result.outliers) if manifest.quantization else None
    replace(manifest, quantization=quantization, parity=result.parity).write(staging)
    if failure and not config.allow_parity_failure:
        raise ExportError(f"{failure}; no artifact written\n\n{result.parity.table()}")
    return result.parity


def _plain_gate(config: ExportConfig, staging: Path) -> ParityRecord:
    """The gate on every parity question, as `--fallback none` (and float exports) run it."""
    report = run_parity(
        config.checkpoint, staging, _parity_records(config), config.parity_max_new_tokens, threads=config.threads
    )
    manifest = Manifest.read(staging)
    replace(manifest, parity=report).write(staging)
    if not report.passed and not config.allow_parity_failure:
        hint = " (drop --fallback none to let the export search for what needs float)" if config.quantize else ""
        raise ExportError(f"parity gate failed; no artifact written{hint}\n\n{report.table()}")
    return report


def _mb(*paths: Path) -> str:
    return f"{sum(p.stat().st_size for p in paths if p.exists()) / 1e6:.1f} MB"


def _save_tokenizer(checkpoint: str, work: Path) -> bool:
    """The checkpoint's tokenizer as `work/tokenizer.json`: before any graph is exported, so that a
    checkpoint without one is refused at once. Returns whether its decoding cleans up spaces before
    punctuation, which the runtime's must do alike."""
    tokenizer = load_tokenizer(checkpoint)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tokenizer.save_pretrained(tmp)
        shutil.copy2(Path(tmp) / "tokenizer.json", work / "tokenizer.json")
    return bool(tokenizer.clean_up_tokenization_spaces)


def _parity_records(config: ExportConfig) -> list[QARecord]:
    return parity_records(config.checkpoint, config.parity_data, config.parity_samples)


def _versions() -> dict[str, str]:
    found = {"edgeqa": __version__}
    for package in ("onnxruntime", "onnx", "optimum", "optimum-onnx", "transformers", "torch", "tokenizers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _manifest(
    config: ExportConfig,
    trained: TrainingRecord,
    staging: Path,
    settings: QuantizeSettings | None,
    shared: list[SharedTensor],
    cleanup: bool,
) -> Manifest:
    from tokenizers import Tokenizer

    model_config = json.loads((staging / "config.json").read_text(encoding="utf-8"))
    dims = ModelDims(
        num_layers=model_config["num_layers"],
        num_decoder_layers=model_config.get("num_decoder_layers") or model_config["num_layers"],
        num_heads=model_config["num_heads"],
        d_kv=model_config["d_kv"],
        d_model=model_config["d_model"],
        vocab_size=model_config["vocab_size"],
    )
    special = SpecialTokens(
        pad=model_config.get("pad_token_id", 0),
        eos=model_config.get("eos_token_id", 1),
        decoder_start=model_config.get("decoder_start_token_id", 0),
    )
    files = graph_entries(staging)
    files["tokenizer"] = file_entry(staging, "tokenizer.json")
    files.update({role: file_entry(staging, name) for role, name in CONFIG_FILES.items() if (staging / name).exists()})
    return Manifest(
        files=files,
        dims=dims,
        model_name=trained.model,
        special_tokens=special,
        tokenizer_vocab_size=Tokenizer.from_file(str(staging / "tokenizer.json")).get_vocab_size(True),
        prompt_template=trained.prompt_template,
        context_template=trained.context_template,
        no_answer=trained.no_answer,
        max_input_tokens=config.max_input_tokens or trained.max_source_tokens,
        max_answer_tokens=trained.max_target_tokens,
        generation=GenerationDefaults(
            max_new_tokens=min(trained.eval_max_new_tokens, trained.max_target_tokens),
            num_beams=trained.eval_num_beams,
        ),
        clean_up_tokenization_spaces=cleanup,
        quantization=settings.record() if settings else None,
        versions=_versions(),
        shared_tensors=shared,
    )
