"""Cohorts: rows that joined the decoder together, and so share one encoder run and one decoder run a step.

A cohort's rows have self-attention caches of one length (the decoder graph has no mask for
them), so rows that join later form a cohort of their own. `GreedyCohort` holds greedy and
sampled rows, each choosing with its own options and generator; a row leaves as soon as it is
finished or cancelled, its caches dropped. `BeamCohort` holds questions searched with the same
beam options; its rows finish together.

A step either happens or not: when it raises, the cohort is as it was before it, so that the
decoder can split it into cohorts of one row each, which take the step again alone (see
`Decoder.step`): a row that fails alone fails; the others get the tokens they would have had.
"""

from __future__ import annotations

import copy

import numpy as np

from edgeqa.manifest import SpecialTokens
from edgeqa.runtime.generate import _NEG, beam_candidates, choice_key, choose_tokens, gather, shifted_and_log_total
from edgeqa.runtime.graphs import DecoderState, T5Graphs
from edgeqa.runtime.options import GenerationOptions
from edgeqa.runtime.rows import FinishReason, Row, Update, until_eos
from edgeqa.runtime.text import AnswerText
from edgeqa.runtime.tokenizer import PromptTokenizer


class Cohort:
    """Rows that share one encoder run and one decoder run a step (see the module's docstring)."""

    def __init__(
        self,
        graphs: T5Graphs,
        state: DecoderState,
        rows: list[Row],
        tokenizer: PromptTokenizer,
        special: SpecialTokens,
    ):
        self.graphs, self.state, self.rows, self.eos = graphs, state, rows, special.eos
        self.tokenizer = tokenizer
        self._begin(special)

    def _begin(self, special: SpecialTokens) -> None:
        """Set up what the kind of cohort carries between steps."""
        raise NotImplementedError

    def step(self) -> list[Update]:
        """Advance every row one token (all of it, or nothing where it raises); the rows' news."""
        raise NotImplementedError

    def split(self) -> list[Cohort]:
        """Cohorts of one question each, where this one is (copies of its caches)."""
        raise NotImplementedError


class GreedyCohort(Cohort):
    """Greedy and sampled rows decoded together, one token each a step."""

    def _begin(self, special: SpecialTokens) -> None:
        self.texts = [AnswerText(self.tokenizer, row.stop, row.stream) for row in self.rows]
        # every row has a generator (a greedy one never draws): a seeded row samples alike in any batch
        self.rngs = [np.random.default_rng(row.options.seed) for row in self.rows]
        # Every numpy call right after a decoder step runs with cold caches (the step streamed the
        # weights through them) and costs 10-30 us, not 1: a step writes into one preallocated
        # array and keeps to a few calls while no row leaves.
        width = 1 + max(row.options.max_new_tokens for row in self.rows)
        self.sequences = np.full((len(self.rows), width), special.decoder_start, dtype=np.int64)
        self.log_probs = np.zeros(len(self.rows), dtype=np.float64)  # of scored rows' tokens so far
        self.length = 1
        self._regroup()

    def _regroup(self) -> None:
        """Rows that choose alike, in one call each (a sampled row still draws from its own generator)."""
        by_key: dict[tuple, list[int]] = {}
        for index, row in enumerate(self.rows):
            by_key.setdefault(choice_key(row.options), []).append(index)
        self.groups: list[tuple[np.ndarray | None, GenerationOptions, list[np.random.Generator] | None]] = []
        for indices in by_key.values():
            opts = self.rows[indices[0]].options
            rngs = [self.rngs[i] for i in indices] if opts.do_sample else None
            members = None if len(by_key) == 1 else np.asarray(indices)  # None: all rows, no fancy-index copies
            self.groups.append((members, opts, rngs))
        self.limits = np.array([row.options.max_new_tokens for row in self.rows])
        self.shortest = int(self.limits.min())
        self.watched = [i for i, text in enumerate(self.texts) if text.watched]
        self.sampled = [rng for rng, row in zip(self.rngs, self.rows, strict=True) if row.options.do_sample]
        scored = [i for i, row in enumerate(self.rows) if row.scored]
        self.scored = None if not scored else np.asarray(scored)

    def split(self) -> list[Cohort]:
        parts: list[Cohort] = []
        for index, row in enumerate(self.rows):
            part = copy.copy(self)
            part.state = self.state.subset([index])
            part.rows, part.texts, part.rngs = [row], [self.texts[index]], [self.rngs[index]]
            part.sequences = self.sequences[[index]]
            part.log_probs = self.log_probs[[index]]
            part._regroup()
            parts.append(part)
        return parts

    def step(self) -> list[Update]:
        length, cache = self.length, self.state.self_cache
        drawn = [rng.bit_generator.state for rng in self.sampled]
        try:
            logits = self.graphs.step(self.state, self.sequences[:, length - 1]).astype(np.float32, copy=False)
            tokens = self.sequences[:, length]
            # the plain model's scores, taken before choosing edits the logits in place (penalties, bans)
            plain = None if self.scored is None else logits[self.scored]
            for members, opts, rngs in self.groups:
                if members is None:
                    tokens[:] = choose_tokens(self.sequences[:, :length], logits, opts, self.eos, rngs)
                else:
                    chosen = choose_tokens(self.sequences[members, :length], logits[members], opts, self.eos, rngs)
                    tokens[members] = chosen
            gains = None if plain is None else _chosen_log_probs(plain, tokens[self.scored])
        except Exception:
            self.state.self_cache = cache  # as before the step
            for rng, state in zip(self.sampled, drawn, strict=True):
                rng.bit_generator.state = state
            raise
        self.length = length + 1
        if gains is not None:
            self.log_probs[self.scored] += gains
        ended = tokens == self.eos
        if length >= self.shortest:
            ended |= length >= self.limits
        cancelled = any(row.cancelled for row in self.rows)
        if not (self.watched or cancelled or ended.any()):
            return []
        updates: list[Update] = []
        leaving: list[int] = []
        candidates = range(len(self.rows)) if cancelled else sorted({*self.watched, *np.flatnonzero(ended).tolist()})
        for index in candidates:
            row, text, done = self.rows[index], self.texts[index], bool(ended[index])
            if row.cancelled:
                row.finish(FinishReason.CANCELLED)
                updates.append(Update(row))
                leaving.append(index)
                continue
            if not (done or text.watched):
                continue
            row.tokens = self.sequences[index, 1 : length + 1].tolist()
            if row.scored:
                row.log_prob = float(self.log_probs[index])
            try:
                update = self._text(row, text, done)
            except Exception as e:  # noqa: BLE001 (this row's text failed: this row fails, not its batch)
                row.finish(FinishReason.FAILED, error=e)
                update = Update(row)
            if update is not None:
                updates.append(update)
            if row.finished:
                leaving.append(index)
        if leaving:
            self._drop(leaving)
        return updates

    def _text(self, row: Row, text: AnswerText, done: bool) -> Update | None:
        """The row's news after a token: text to stream, or its finish (a stop string, its end, its limit)."""
        final = None
        if not done:
            delta, final = text.advance(row.tokens)
            if final is None:
                return Update(row, delta) if delta else None
        delta, answer, stopped = text.finish(row.tokens, final)
        row.finish(FinishReason.STOP if stopped or row.tokens[-1] == self.eos else FinishReason.LENGTH, answer)
        return Update(row, delta)

    def _drop(self, leaving: list[int]) -> None:
        keep = [i for i in range(len(self.rows)) if i not in leaving]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        self.state.select(keep)
        self.sequences = self.sequences[keep]
        self.log_probs = self.log_probs[keep]
        self.texts = [self.texts[i] for i in keep]
        self.rngs = [self.rngs[i] for i in keep]
        self._regroup()


def _chosen_log_probs(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The log-probability of each row's chosen token under the plain model (float64)."""
    shifted, log_total = shifted_and_log_total(logits.astype(np.float64))
    return shifted[np.arange(len(tokens)), tokens] - log_total[:, 0]


class BeamCohort(Cohort):
    """Questions searched with the same beam options, as transformers' `generate` (4.57) searches.

    Same logits processors in the same order and the same bookkeeping (2 * num_beams candidates,
    length-normalised finished hypotheses, the same early-stopping heuristic), so float graphs give
    the PyTorch model's tokens. Every question's answer is known when the search ends.
    """

    def _begin(self, special: SpecialTokens) -> None:
        self.opts = opts = self.rows[0].options
        batch, beams = len(self.rows), opts.num_beams
        # transformers keeps (1 + number of eos ids) * num_beams candidates, at least 2 * num_beams
        self.keep = 2 * beams
        self.top_mask = np.arange(self.keep) < beams
        self.max_length = 1 + opts.max_new_tokens
        self.state.repeat(beams)
        self.running = np.full((batch, beams, self.max_length), special.eos, dtype=np.int64)
        self.running[:, :, 0] = special.decoder_start
        self.finished_seqs = self.running.copy()
        self.running_scores = np.zeros((batch, beams), dtype=np.float32)
        self.running_scores[:, 1:] = _NEG
        self.finished_scores = np.full((batch, beams), _NEG, dtype=np.float32)
        self.is_finished = np.zeros((batch, beams), dtype=bool)
        self.improvable = np.ones((batch, 1), dtype=bool)
        self.cur_len = 1

    def split(self) -> list[Cohort]:
        beams = self.opts.num_beams
        parts: list[Cohort] = []
        for question, row in enumerate(self.rows):
            part = copy.copy(self)
            part.state = self.state.subset(list(range(question * beams, (question + 1) * beams)))
            part.rows = [row]
            for name in ("running", "finished_seqs", "running_scores", "finished_scores", "is_finished", "improvable"):
                setattr(part, name, getattr(self, name)[question : question + 1].copy())
            parts.append(part)
        return parts

    def step(self) -> list[Update]:
        if all(row.cancelled or row.finished for row in self.rows):
            updates = self._cancel()
            self.rows = []
            return updates
        searching = self._search_step()
        updates = self._cancel()
        if not searching:
            updates += self._finish()
            self.rows = []
        return updates

    def _cancel(self) -> list[Update]:
        cancelled = [row for row in self.rows if row.cancelled and not row.finished]
        for row in cancelled:
            row.finish(FinishReason.CANCELLED)
        return [Update(row) for row in cancelled]

    def _search_step(self) -> bool:
        """One step of the search (all of it, or nothing where it raises); False once it has ended."""
        opts, state, cur_len, eos = self.opts, self.state, self.cur_len, self.eos
        batch, beams = self.running_scores.shape
        rows = np.arange(batch)[:, None]
        flat = self.running[:, :, :cur_len].reshape(batch * beams, cur_len)
        cache = state.self_cache
        try:
            logits = self.graphs.step(state, flat[:, -1]).astype(np.float32, copy=False)
            top_scores, source_beam, token = beam_candidates(logits, flat, self.running_scores, opts, eos, self.keep)
        except Exception:
            state.self_cache = cache
            raise
        candidates = self.running[rows, source_beam]
        candidates[:, :, cur_len] = token
        hits = (token == eos) | (cur_len + 1 >= self.max_length)

        # the best candidates that did not just finish keep running
        alive_scores = top_scores + hits.astype(np.float32) * _NEG
        best = np.argsort(-alive_scores, axis=1, kind="stable")[:, :beams]
        self.running = candidates[rows, best]
        self.running_scores = gather(alive_scores, best)
        parents = gather(source_beam, best)

        # the candidates that did finish compete, length-normalised, for the finished slots
        just_finished = hits & self.top_mask[None, :]
        done_scores = top_scores / np.float32(cur_len**opts.length_penalty)
        full = self.is_finished.all(axis=-1, keepdims=True) & opts.early_stopping
        done_scores = done_scores + full.astype(np.float32) * _NEG
        done_scores = done_scores + (~self.improvable).astype(np.float32) * _NEG
        done_scores = done_scores + (~just_finished).astype(np.float32) * _NEG
        merged_scores = np.concatenate([self.finished_scores, done_scores], axis=1)
        pick = np.argsort(-merged_scores, axis=1, kind="stable")[:, :beams]
        self.finished_seqs = np.concatenate([self.finished_seqs, candidates], axis=1)[rows, pick]
        self.finished_scores = gather(merged_scores, pick)
        self.is_finished = gather(np.concatenate([self.is_finished, just_finished], axis=1), pick)

        state.reorder((parents + np.arange(batch)[:, None] * beams).reshape(-1))
        self.cur_len = cur_len = cur_len + 1
        # transformers' heuristic for a bool `early_stopping`: the best running beam at its current length
        best_running = self.running_scores[:, :1] / np.float32((cur_len - 1) ** opts.length_penalty)
        worst_finished = np.where(self.is_finished, self.finished_scores.min(axis=1, keepdims=True), np.float32(-1.0e9))
        self.improvable = self.improvable & (best_running > worst_finished).any(axis=-1, keepdims=True)
        open_beams = not (self.is_finished.all() and opts.early_stopping is True)
        return bool(self.improvable.any() and open_beams and not hits.all())

    def _finish(self) -> list[Update]:
        updates = []
        best = zip(self.rows, self.finished_seqs[:, 0, 1:].tolist(), self.finished_scores[:, 0].tolist(), strict=True)
        for row, tokens, score in best:
            if row.finished:  # cancelled on the way
                continue
            row.tokens = until_eos(tokens, self.eos)
            if row.scored:  # the search's length-normalised score, back to a sum over the answer's tokens
                row.log_prob = float(score) * len(row.tokens) ** self.opts.length_penalty
            try:
                delta, answer, stopped = AnswerText(self.tokenizer, row.stop, row.stream).finish(row.tokens)
            except Exception as e:  # noqa: BLE001 (this row's text failed: this row fails, not its batch)
                row.finish(FinishReason.FAILED, error=e)
                updates.append(Update(row))
                continue
            ended = stopped or bool(row.tokens and row.tokens[-1] == self.eos)
            row.finish(FinishReason.STOP if ended else FinishReason.LENGTH, answer)
            updates.append(Update(row, delta))
        return updates
