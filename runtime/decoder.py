"""The decoder: every answer edgeqa generates, from `QAModel`, `edgeqa serve` or the parity gate, goes through it.

Rows join with their prompt ids and options; each `step()` advances every live row by one token
and reports what changed; a row leaves when its answer ends, its limit is reached or its caller
cancels it, and its caches are dropped. Padding, the input limit, stop strings and the streamed
text live here once, so an answer does not depend on who asks or with whom:

- prompts are padded to a multiple of `PAD_MULTIPLE` tokens (below), and per-token int8 graphs
  quantize every row by itself, so a row's numbers do not depend on its batch;
- int4 graphs run an even number of rows (`T5Graphs.step`);
- a sampled row draws from its own generator, seeded by its own options.

Not thread-safe: one decoder per thread (the model's sessions are shared and are).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from edgeqa.errors import InputError
from edgeqa.manifest import SpecialTokens
from edgeqa.runtime.cohorts import BeamCohort, GreedyCohort
from edgeqa.runtime.graphs import T5Graphs
from edgeqa.runtime.options import GenerationOptions
from edgeqa.runtime.rows import Row, Update
from edgeqa.runtime.tokenizer import PromptTokenizer

# Prompts are padded to a multiple of this many tokens: onnxruntime's float MatMul sums the
# cross-attention over the encoder positions in groups, and a last group of 3 is summed in another
# order than a full group. With whole groups only, the zeros that padding adds leave every sum
# unchanged, so a prompt gets the same numbers however much padding its batch gives it.
PAD_MULTIPLE = 4


def pad_prompts(prompts: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Input ids and attention mask for a batch of prompts, padded to a multiple of `PAD_MULTIPLE`."""
    width = -(-max(len(ids) for ids in prompts) // PAD_MULTIPLE) * PAD_MULTIPLE
    input_ids = np.full((len(prompts), width), pad, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, ids in enumerate(prompts):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


class Decoder:
    """Batched step-by-step generation over an artifact's graphs (`QAModel.decoder()` makes one).

    Args:
        graphs: The artifact's encoder and decoder sessions.
        tokenizer: The artifact's tokenizer (prompts and answer text).
        special: The model's special token ids.
    """

    def __init__(self, graphs: T5Graphs, tokenizer: PromptTokenizer, special: SpecialTokens):
        self.graphs, self.tokenizer, self.special = graphs, tokenizer, special
        self.vocab_size = graphs.dims.vocab_size
        self.max_input_tokens = tokenizer.max_input_tokens
        self._cohorts: list[GreedyCohort | BeamCohort] = []

    def prompts(self, questions: Sequence[str]) -> list[tuple[list[int], bool]]:
        """Prompt ids for each question (the artifact's template, cut to its input limit) and whether it was cut.

        Raises:
            InputError: a question that is not a string, or empty.
        """
        return self.tokenizer.encode_checked(list(questions))

    def join(self, rows: Sequence[Row]) -> None:
        """Start generating `rows`: one encoder run for the greedy and sampled rows, one for each set
        of beam options; they take their first step at the next `step()`.

        Raises:
            InputError: a row without prompt ids, longer than the input limit, or with ids outside
                the vocabulary (nothing joins then).
        """
        for row in rows:
            self._check(row)
        started = time.perf_counter()
        greedy = [row for row in rows if row.options.num_beams == 1]
        beams: dict[GenerationOptions, list[Row]] = {}
        for row in rows:
            if row.options.num_beams > 1:
                beams.setdefault(row.options, []).append(row)
        for group, cohort_type in [(greedy, GreedyCohort), *((group, BeamCohort) for group in beams.values())]:
            if not group:
                continue
            for row in group:
                row.joined_at = started
            state = self.graphs.encode(*pad_prompts([row.ids for row in group], self.special.pad))
            encoded = time.perf_counter()
            for row in group:
                row.encoded_at = encoded
            self._cohorts.append(cohort_type(self.graphs, state, list(group), self.tokenizer, self.special))
            started = encoded

    def _check(self, row: Row) -> None:
        if not isinstance(row.options, GenerationOptions):
            raise InputError(f"a row's options must be GenerationOptions, got {type(row.options).__name__}")
        if not row.ids:
            raise InputError("every prompt needs at least one token id")
        if len(row.ids) > self.max_input_tokens:
            raise InputError(
                f"a prompt has {len(row.ids)} tokens, more than the artifact's {self.max_input_tokens}; "
                "make prompts with Decoder.prompts(), which cuts them to the limit"
            )
        if min(row.ids) < 0 or max(row.ids) >= self.vocab_size:
            raise InputError(f"prompt token ids must be in [0, {self.vocab_size}), got {min(row.ids)}..{max(row.ids)}")

    @property
    def rows(self) -> list[Row]:
        """The rows still generating."""
        return [row for cohort in self._cohorts for row in cohort.rows if not row.finished]

    @property
    def busy(self) -> bool:
        """Whether any row is still generating."""
        return bool(self._cohorts)

    def step(self) -> list[Update]:
        """Advance every live row by one token; the news of each row that has any (text, its finish)."""
        updates: list[Update] = []
        for cohort in self._cohorts:
            updates += cohort.step()
        self._cohorts = [cohort for cohort in self._cohorts if cohort.rows]
        return updates

    def run(self) -> None:
        """Step until every row has finished."""
        while self._cohorts:
            self.step()
