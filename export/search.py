"""The export's search for quantized graphs that pass the parity gate with no node names from the user.

Candidates, cheapest first, each through the real gate on the real graphs:

1. plain int8 (or int4): what `--fallback none` exports;
2. smoothing (`export.smoothing`): outlier channels moved into the weights, everything int8;
3. float fallback (`export.fallback`): the node groups whose quantization costs most stay float,
   the top 1, 2, 4, ... of the ranking, from the smoothed weights where smoothing helped, then
   (auto) from the plain ones, within `MAX_FLOAT_SHARE` of the weights and `MAX_GATE_RUNS` gate runs.

The parity questions are split in two: the search ranks and gates on the tuning half (even
positions); a candidate that passes there is confirmed on the other half, whose figures are the
artifact's parity record. Nothing is smoothed or kept float unless the candidate before it failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeqa.errors import ConfigError, ExportError
from edgeqa.export.calibration import input_ranges, teacher_forced
from edgeqa.export.config import MIN_SEARCH_QUESTIONS, QuantizeSettings
from edgeqa.export.fallback import RankedGroup, node_groups, rank_groups
from edgeqa.export.loading import load_model, load_tokenizer
from edgeqa.export.nodes import module_path
from edgeqa.export.parity import ParityCheck
from edgeqa.export.smoothing import apply_smoothing, smoothing_scales
from edgeqa.manifest import FallbackMode, FloatGroupRecord, GateAttempt, OutlierSearch, ParityRecord, SmoothingRecord

logger = logging.getLogger(__name__)

#: At most this share of the quantizable weights stays float: the int8 artifact then stays under
#: 45% of the float one (0.25 x 0.75 + 0.25).
MAX_FLOAT_SHARE = 0.25
MAX_GATE_RUNS = 12

#: Builds the artifact in the staging folder from float weights (a checkpoint folder), with the
#: given modules (module paths) left in float, and returns the number of float nodes.
Build = Callable[[str, frozenset[str]], int]


@dataclass(frozen=True)
class SearchResult:
    outliers: OutlierSearch
    parity: ParityRecord


class SearchFailed(ExportError):
    """Every candidate failed the gate; `result` holds the last one's figures (built in staging)."""

    def __init__(self, message: str, result: SearchResult):
        super().__init__(message)
        self.result = result


def search(
    mode: FallbackMode,
    checkpoint: str,
    check: ParityCheck,
    settings: QuantizeSettings,
    build: Build,
    staging: Path,
    workdir: Path,
) -> SearchResult:
    """Find the first candidate that passes the gate on both halves; build it in `staging`.

    Raises:
        SearchFailed: no candidate passed within the caps; the message gives every attempt.
        ConfigError: fewer than 2 parity questions, which cannot be split into the two halves.
    """
    method = str(settings.weight_type)
    total = len(check.records)
    if total < MIN_SEARCH_QUESTIONS:
        raise ConfigError(
            f"the outlier search tunes on half of the parity questions and confirms on the other half, so it needs "
            f"at least {MIN_SEARCH_QUESTIONS} and has {total}; give more (--parity-samples, --parity-data) or "
            "--fallback none"
        )
    tune, confirm = list(range(0, total, 2)), list(range(1, total, 2))
    attempts: list[GateAttempt] = []
    staged = _Staged()

    def gate(
        name: str, weights: str, smoothing: list[SmoothingRecord], groups: list[RankedGroup], share: float = 0.0
    ) -> tuple[ParityRecord, ParityRecord | None]:
        """Build a candidate in staging; (tuning record, confirmation record if the tuning half passed)."""
        staged.smoothing, staged.groups, staged.share = smoothing, groups, share
        build(weights, frozenset(module_path(m) for r in groups for m in r.group.modules))
        tuning = staged.record = check.run(staging, tune, "tuning")
        attempts.append(_attempt(name, tuning))
        logger.info("export: %s on %d tuning questions: %s", name, len(tune), _figures(attempts[-1]))
        if not tuning.passed:
            return tuning, None
        confirmation = staged.record = check.run(staging, confirm, "confirmation")
        attempts.append(_attempt(name, confirmation))
        logger.info("export: %s on %d confirmation questions: %s", name, len(confirm), _figures(attempts[-1]))
        return tuning, confirmation

    def finish() -> SearchResult:
        """What staging holds: the last candidate built, and its last gate record."""
        assert staged.record is not None  # the first gate has run
        found = OutlierSearch(
            mode=mode,
            smoothing=staged.smoothing,
            float_groups=[_float_group(r) for r in staged.groups],
            float_share=staged.share,
            attempts=attempts,
            seconds=time.perf_counter() - started,
        )
        return SearchResult(found, staged.record)

    last, confirmed = gate(method, checkpoint, [], [])
    if confirmed and confirmed.passed:
        return SearchResult(OutlierSearch(mode=mode, attempts=attempts), confirmed)
    started = time.perf_counter()
    model, tokenizer = _load(checkpoint)
    data = teacher_forced(
        tokenizer,
        [check.prompts[i] for i in tune],
        [check.expected[i] for i in tune],
        max_input_tokens=check.max_input_tokens,
        decoder_start=model.config.decoder_start_token_id,
        pad=model.config.pad_token_id,
    )
    weights: str = checkpoint
    smoothing: list[SmoothingRecord] = []
    if mode in (FallbackMode.AUTO, FallbackMode.SMOOTH):
        scales = smoothing_scales(model, input_ranges(model, data))
        if scales:
            records = apply_smoothing(model, scales)
            smoothed = str(_save(model, tokenizer, workdir / "smoothed"))
            logger.info(
                "export: smoothing %d channels in %d activations", sum(r.channels for r in records), len(records)
            )
            tuning, confirmed = gate(f"{method} + smoothing", smoothed, records, [])
            if confirmed and confirmed.passed:
                return finish()
            if _closer(tuning, last):
                weights, last, smoothing = smoothed, tuning, records
            else:  # smoothing did not help: the fallback starts from the plain weights
                logger.info("export: smoothing did not bring the tuning figures closer; not kept")
        else:
            logger.info("export: no activation needs smoothing")
    # The fallback starts from the smoothed weights where smoothing helped, then (auto) from the
    # plain ones: smoothing moves range into the weights, which can leave int4 weights worse off.
    starts = [(weights, smoothing)] + ([(checkpoint, [])] if mode == FallbackMode.AUTO and smoothing else [])
    for weights, smoothing in starts if mode in (FallbackMode.AUTO, FallbackMode.FLOAT) else []:
        if len(attempts) >= MAX_GATE_RUNS:  # no gate run left to try this start with
            break
        model = _load(checkpoint)[0] if not smoothing else model
        groups = node_groups(model)
        ranked = rank_groups(model, data, settings, groups)
        quantizable = sum(g.parameters for g in groups)
        eligible = _within_cap(ranked, quantizable)
        if len(eligible) < len(ranked):
            skipped = ", ".join(r.group.name for r in ranked if r not in eligible)
            logger.info("export: over the %.0f%% float cap, not tried: %s", MAX_FLOAT_SHARE * 100, skipped)
        count = 0
        while len(attempts) < MAX_GATE_RUNS and count < len(eligible):
            count = min(max(1, 2 * count), len(eligible))
            chosen = eligible[:count]
            share = sum(r.group.parameters for r in chosen) / quantizable
            prefix = f"{method} + smoothing" if smoothing else method
            last, confirmed = gate(f"{prefix} + {count} groups float", weights, smoothing, chosen, share)
            if confirmed and confirmed.passed:
                return finish()
    result = finish()
    tried = "; ".join(f"{a.name} ({a.questions}): {_figures(a)}" for a in attempts)
    raise SearchFailed(
        f"parity gate failed after {len(attempts)} gate runs ({tried}); the search stops at "
        f"{MAX_FLOAT_SHARE * 100:.0f}% float weights or {MAX_GATE_RUNS} gate runs",
        result,
    )


@dataclass
class _Staged:
    """The candidate last built in staging: its latest gate record and what it is made of."""

    record: ParityRecord | None = None
    smoothing: list[SmoothingRecord] = field(default_factory=list)
    groups: list[RankedGroup] = field(default_factory=list)
    share: float = 0.0


def _within_cap(ranked: list[RankedGroup], quantizable: int) -> list[RankedGroup]:
    """The ranking without the groups that would take the float weights past `MAX_FLOAT_SHARE`."""
    kept, total = [], 0
    for r in ranked:
        if total + r.group.parameters <= MAX_FLOAT_SHARE * quantizable:
            kept.append(r)
            total += r.group.parameters
    return kept


def _closer(record: ParityRecord, other: ParityRecord) -> bool:
    return abs(record.rouge_l_delta) < abs(other.rouge_l_delta) or (
        abs(record.rouge_l_delta) == abs(other.rouge_l_delta) and record.identical_answers > other.identical_answers
    )


def _attempt(name: str, record: ParityRecord) -> GateAttempt:
    return GateAttempt(
        name=name,
        questions=f"{record.split} ({record.samples})",
        rouge_l_delta=record.rouge_l_delta,
        exact_match_delta=record.artifact_exact_match - record.reference_exact_match,
        identical_answers=record.identical_answers,
        passed=record.passed,
    )


def _figures(attempt: GateAttempt) -> str:
    return (
        f"ROUGE-L {attempt.rouge_l_delta * 100:+.1f}, exact match {attempt.exact_match_delta * 100:+.1f}, "
        f"identical {attempt.identical_answers * 100:.1f}%, {'pass' if attempt.passed else 'FAIL'}"
    )


def _float_group(ranked: RankedGroup) -> FloatGroupRecord:
    return FloatGroupRecord(
        group=ranked.group.name,
        modules=len(ranked.group.modules),
        parameters=ranked.group.parameters,
        error_reduction=round(ranked.error_reduction, 4),
    )


def _load(checkpoint: str) -> tuple[Any, Any]:
    return load_model(checkpoint), load_tokenizer(checkpoint)


def _save(model: Any, tokenizer: Any, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
