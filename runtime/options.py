"""Generation options: one frozen dataclass, validated once."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Any

from edgeqa.errors import InputError

# The bounds every artifact keeps (its own max_answer_tokens and a server's caps are tighter): every
# accepted value is one that numpy and onnxruntime can take.
from edgeqa.prompt import MAX_BEAMS, MAX_TOKENS
from edgeqa.typed_json import check_types


@dataclass(frozen=True)
class GenerationOptions:
    """How answers are generated. Defaults come from the artifact's manifest.

    Attributes:
        max_new_tokens: Most answer tokens.
        min_new_tokens: End-of-answer is forbidden before this many tokens.
        num_beams: 1 for greedy or sampling; more for beam search.
        length_penalty: Beam scores are divided by length ** length_penalty.
        early_stopping: Beam search stops once num_beams answers are finished.
        do_sample: Sample instead of taking the most likely token.
        temperature: Sampling temperature (> 0; tiny ones choose as greedy search does).
        top_k: Sample among the k most likely tokens (0 = all).
        top_p: Sample among the most likely tokens whose probability adds up to top_p.
        seed: Seed of the sampler (0 to 2**63 - 1), for reproducible samples.
        no_repeat_ngram_size: Forbid repeating any n-gram of this size (0 = off).
        repetition_penalty: > 1 makes tokens already generated less likely.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int | None = None
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):  # numpy's numbers as Python's, whose types the check knows
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        check_types(self, InputError)
        for name in ("length_penalty", "temperature", "top_p", "repetition_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise InputError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1"),
            (self.max_new_tokens <= MAX_TOKENS, "max_new_tokens", f"must be at most {MAX_TOKENS}"),
            (self.min_new_tokens >= 0, "min_new_tokens", "must be 0 or more"),
            (self.min_new_tokens <= self.max_new_tokens, "min_new_tokens", "must not exceed max_new_tokens"),
            (self.num_beams >= 1, "num_beams", "must be at least 1"),
            (self.num_beams <= MAX_BEAMS, "num_beams", f"must be at most {MAX_BEAMS}"),
            (not (self.do_sample and self.num_beams > 1), "num_beams", "must be 1 when sampling (do_sample)"),
            (self.temperature > 0, "temperature", "must be greater than 0"),
            (0 <= self.top_k < 2**31, "top_k", "must be between 0 (off) and 2**31 - 1"),
            (self.seed is None or 0 <= self.seed < 2**63, "seed", "must be between 0 and 2**63 - 1"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (0 <= self.no_repeat_ngram_size <= MAX_TOKENS, "no_repeat_ngram_size", f"must be 0 (off) to {MAX_TOKENS}"),
            (0.01 <= self.repetition_penalty <= 100, "repetition_penalty", "must be between 0.01 and 100"),
            (-10 <= self.length_penalty <= 10, "length_penalty", "must be between -10 and 10"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise InputError(f"{name} {rule}, got {getattr(self, name)!r}")

    def updated(self, **overrides: Any) -> GenerationOptions:
        """A copy with the given fields replaced; None values keep the current field.

        Raises:
            InputError: an unknown field, or a value out of its range (naming the field and value).
        """
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"unknown generation option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _plain(value: Any) -> Any:
    """An integer or real number of another type (numpy's `int64`, `float32`) as an int or float; else `value`."""
    if isinstance(value, bool | int | float) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)
