"""The decoder: every answer edgeqa generates, from `QAModel`, `edgeqa serve` or the parity gate, goes through it.

Rows join with their prompt ids and options; each `step()` advances every live row by one token
and reports what changed; a row leaves when its answer ends, its limit is reached or its caller
cancels it, and its caches are dropped. Padding, the input limit, stop strings and the streamed
text live here once, so an answer does not depend on who asks or with whom (on float and per-token int8 graphs,
the export's default; per-tensor int8 ones quantize a batch's activations together):

- prompts are padded to a multiple of `PAD_MULTIPLE` tokens (below), and per-token int8 graphs
  quantize every row by itself, so a row's numbers do not depend on its batch;
- int4 graphs run an even number of rows (`T5Graphs.step`);
- a sampled row draws from its own generator, seeded by its own options.

A failure is one row's: when a batch's encoder run or step raises, its rows are tried again one
by one (a step changes nothing where it raises), so that the row at fault finishes as FAILED, with
the error, and the others get the tokens they would have had alone.

Not thread-safe: one decoder per thread (the model's sessions are shared and are).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from edgeqa.errors import InputError
from edgeqa.manifest import SpecialTokens
from edgeqa.runtime.cohorts import BeamCohort, Cohort, GreedyCohort
from edgeqa.runtime.graphs import T5Graphs
from edgeqa.runtime.inputs import check_batch
from edgeqa.runtime.options import GenerationOptions
from edgeqa.runtime.rows import FinishReason, Row, Update
from edgeqa.runtime.tokenizer import PromptTokenizer

logger = logging.getLogger(__name__)

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
        self._cohorts: list[Cohort] = []
        self._failed: list[Row] = []  # rows whose encoder run failed, reported at the next step

    def prompts(
        self, questions: Sequence[str], contexts: Sequence[str | None] | None = None
    ) -> list[tuple[list[int], bool]]:
        """Prompt ids for each question and whether it was cut: the artifact's prompt template, cut to its
        input limit; with a passage to read (`contexts[i]`), its context template, never cut.

        Raises:
            InputError: `questions` that is one string, not a list; a question that is not a string, or
                empty; a passage that is not a string, or empty; a question and passage over the input limit.
        """
        questions = check_batch(questions, "Decoder.prompts", "questions", "give one as a list of one")
        return self.tokenizer.encode_checked(questions, contexts)

    def join(self, rows: Sequence[Row]) -> None:
        """Start generating `rows`: one encoder run for the greedy and sampled rows, one for each set
        of beam options; they take their first step at the next `step()`.

        Raises:
            InputError: a row without prompt ids, longer than the input limit, or with ids outside
                the vocabulary (nothing joins then).
        """
        for row in rows:
            self._check(row)
        greedy = [row for row in rows if row.options.num_beams == 1]
        beams: dict[GenerationOptions, list[Row]] = {}
        for row in rows:
            if row.options.num_beams > 1:
                beams.setdefault(row.options, []).append(row)
        if greedy:
            self._start(greedy, GreedyCohort)
        for group in beams.values():
            self._start(group, BeamCohort)

    def _start(self, rows: list[Row], kind: type[Cohort]) -> None:
        """Encode rows together and add their cohort; where that fails, each row alone."""
        started = time.perf_counter()
        for row in rows:
            row.joined_at = started
        try:
            state = self.graphs.encode(*pad_prompts([row.ids for row in rows], self.special.pad))
            cohort = kind(self.graphs, state, list(rows), self.tokenizer, self.special)
        except Exception as e:  # noqa: BLE001 (one row's failure must not fail its batch-mates)
            if len(rows) == 1:
                logger.warning("edgeqa: a prompt could not be encoded: %s", e)
                rows[0].finish(FinishReason.FAILED, error=e)
                self._failed.append(rows[0])
            else:
                for row in rows:
                    self._start([row], kind)
            return
        encoded = time.perf_counter()
        for row in rows:
            row.encoded_at = encoded
        self._cohorts.append(cohort)

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
        """Whether any row is still generating (or has news to report)."""
        return bool(self._cohorts or self._failed)

    def step(self) -> list[Update]:
        """Advance every live row by one token; the news of each row that has any (text, its finish)."""
        updates = [Update(row) for row in self._failed]
        self._failed = []
        cohorts: list[Cohort] = []
        for cohort in self._cohorts:
            updates += self._step(cohort, cohorts)
        self._cohorts = [cohort for cohort in cohorts if cohort.rows]
        return updates

    def _step(self, cohort: Cohort, cohorts: list[Cohort]) -> list[Update]:
        """Step one cohort into `cohorts`; where the step fails, each of its rows (or questions) alone."""
        try:
            updates = cohort.step()
        except Exception as e:  # noqa: BLE001 (one row's failure must not fail its batch-mates)
            if len(cohort.rows) > 1:
                return [update for part in cohort.split() for update in self._step(part, cohorts)]
            logger.warning("edgeqa: a row failed while decoding: %s", e)
            [row] = cohort.rows
            row.finish(FinishReason.FAILED, error=e)
            return [Update(row)]
        cohorts.append(cohort)
        return updates

    def run(self) -> None:
        """Step until every row has finished."""
        while self.busy:
            self.step()
