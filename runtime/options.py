"""Generation options: one frozen dataclass, validated once."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from edgeqa.errors import InputError
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
        temperature: Sampling temperature (> 0).
        top_k: Sample among the k most likely tokens (0 = all).
        top_p: Sample among the most likely tokens whose probability adds up to top_p.
        seed: Seed of the sampler, for reproducible samples.
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
        check_types(self, InputError)
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1"),
            (self.min_new_tokens >= 0, "min_new_tokens", "must be 0 or more"),
            (self.min_new_tokens <= self.max_new_tokens, "min_new_tokens", "must not exceed max_new_tokens"),
            (self.num_beams >= 1, "num_beams", "must be at least 1"),
            (not (self.do_sample and self.num_beams > 1), "num_beams", "must be 1 when sampling (do_sample)"),
            (self.temperature > 0, "temperature", "must be greater than 0"),
            (self.top_k >= 0, "top_k", "must be 0 (off) or more"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size", "must be 0 (off) or more"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be greater than 0"),
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
