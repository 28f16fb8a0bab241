"""Greedy search, sampling and beam search in numpy over `T5Graphs`.

The search rules follow transformers' `generate` (4.57) step for step, so that float graphs
give the same tokens as the PyTorch model: same logits processors in the same order, same
beam bookkeeping (2 * num_beams candidates, length-normalised finished hypotheses, the same
early-stopping heuristic).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgeqa.runtime.graphs import DecoderState, T5Graphs
from edgeqa.runtime.options import GenerationOptions

_NEG = np.float32(-1.0e9)
# exp() of anything below this adds nothing to a float32 sum that holds exp(0) = 1, and computing
# it produces denormal numbers, which x86 CPUs handle 10x slower (most of a beam step's numpy time).
_EXP_FLOOR = np.float32(-80.0)
_GROUP = 32  # tokens per group of `grouped_candidates`


def softmax_terms(shifted: np.ndarray) -> np.ndarray:
    """exp() of max-shifted scores (all <= 0); terms too small to count (and -inf) are 0."""
    # a row of floors, not a scalar: numpy's maximum against a scalar is 3x slower
    terms = np.maximum(shifted, np.full(shifted.shape[-1], _EXP_FLOOR))
    np.exp(terms, out=terms)
    terms *= shifted > _EXP_FLOOR  # a multiply: boolean-mask assignment is 10x slower here
    return terms


def shifted_and_log_total(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x minus each row's maximum, and the log of each row's sum of exp(): log_softmax's two parts."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted, np.log(softmax_terms(shifted).sum(axis=-1, keepdims=True))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-probabilities of each row of logits."""
    shifted, log_total = shifted_and_log_total(x)
    return shifted - log_total


def until_eos(tokens: list[int], eos: int) -> list[int]:
    """The tokens up to and including the first end-of-answer (all of them if there is none)."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[row, index[row]] for each row: `np.take_along_axis` on axis 1 without its overhead."""
    return values[np.arange(values.shape[0])[:, None], index]


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores of each row, best first (ties: lower index first).

    A partial partition then a sort of k entries: a full sort of a (beams x vocabulary) row
    costs more than the decoder step itself.
    """
    if k >= scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")
    candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    candidates.sort(axis=1)  # index order first, so that the stable sort breaks ties by index
    order = np.argsort(-gather(scores, candidates), axis=1, kind="stable")
    return gather(candidates, order)


def grouped_candidates(
    logits: np.ndarray, running_scores: np.ndarray, keep: int, banned: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`beam_candidates` without the (beams x vocabulary) log-probabilities, or None where it cannot tell.

    Token v of a row is in group v % (vocab // _GROUP). Only the tokens of each beam's `keep` groups
    with the highest maxima are scored: none outside them can beat those groups' maxima. The answer
    stands when the best score any other token could reach (its beam's next-highest group maximum) is
    below the keep-th candidate's and no candidate ties with it, so that rounding and ties give what
    the full ranking gives.

    Args:
        logits: float32 (questions x beams, vocab).
        running_scores: (questions, beams).
        keep: Candidates to return per question.
        banned: A token no candidate may be (end-of-answer before the minimum length), or None.
    """
    rows, vocab = logits.shape
    batch, beams = running_scores.shape
    width = vocab // _GROUP
    if width <= keep:
        return None
    shifted, log_total = shifted_and_log_total(logits)
    maxima = shifted[:, : width * _GROUP].reshape(rows, _GROUP, width).max(axis=1)
    order = top_k_indices(maxima, keep + 1)
    groups = np.sort(order[:, :keep], axis=1)
    # ascending token ids: group g's tokens are g, g + width, g + 2 width, ...; the tail is in no group
    tokens = (width * np.arange(_GROUP)[None, :, None] + groups[:, None, :]).reshape(rows, -1)
    tail = np.broadcast_to(np.arange(width * _GROUP, vocab), (rows, vocab - width * _GROUP))
    tokens = np.concatenate([tokens, tail], axis=1)
    scores = (gather(shifted, tokens) - log_total) + running_scores.reshape(-1, 1)
    if banned is not None:
        scores[tokens == banned] = -np.inf
    per_beam = tokens.shape[1]
    scores = scores.reshape(batch, beams * per_beam)
    top = top_k_indices(scores, keep + 1)
    top_scores = gather(scores, top)
    last = top_scores[:, keep - 1 : keep]
    runner_up = gather(maxima, order[:, keep:])
    bound = ((runner_up - log_total) + running_scores.reshape(-1, 1)).reshape(batch, beams)
    # the full ranking decides a tie at the cut (`top_k_indices`' partition depends on all the scores)
    # and scores that are not finite (NaN compares false with the bound)
    if not np.isfinite(last).all() or (bound >= last).any() or (top_scores[:, keep:] == last).any():
        return None
    top = top[:, :keep]
    return top_scores[:, :keep], top // per_beam, gather(tokens.reshape(batch, -1), top)


def beam_candidates(
    logits: np.ndarray, sequences: np.ndarray, running_scores: np.ndarray, opts: GenerationOptions, eos: int, keep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `keep` best continuations of each question: scores, source beams and tokens, best first.

    A continuation's score is its beam's score plus the token's processed log-probability; equal
    scores are ordered by beam, then token.

    Args:
        logits: float32 (questions x beams, vocab).
        sequences: Decoder tokens so far (questions x beams, length), start token included.
        running_scores: (questions, beams).
    """
    min_length = sequences.shape[1] - 1 < opts.min_new_tokens
    if opts.repetition_penalty == 1.0 and not opts.no_repeat_ngram_size:
        found = grouped_candidates(logits, running_scores, keep, eos if min_length else None)
        if found is not None:
            return found
    batch, beams = running_scores.shape
    log_probs = process_scores(sequences, log_softmax(logits), opts, eos)
    vocab = log_probs.shape[-1]
    log_probs = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]).reshape(batch, -1)
    top = top_k_indices(log_probs, keep)
    return gather(log_probs, top), top // vocab, top % vocab


def process_scores(sequences: np.ndarray, scores: np.ndarray, opts: GenerationOptions, eos: int) -> np.ndarray:
    """Apply repetition penalty, n-gram blocking and the minimum length, in transformers' order.

    Args:
        sequences: Decoder tokens so far (rows, length), start token included.
        scores: Logits or log-probabilities (rows, vocab); modified in place.
    """
    if opts.repetition_penalty != 1.0:
        seen = np.take_along_axis(scores, sequences, axis=1)
        seen = np.where(seen < 0, seen * opts.repetition_penalty, seen / opts.repetition_penalty)
        np.put_along_axis(scores, sequences, seen.astype(scores.dtype), axis=1)
    n = opts.no_repeat_ngram_size
    if n and sequences.shape[1] + 1 >= n:
        for row, tokens in enumerate(sequences.tolist()):
            prefix = tuple(tokens[len(tokens) - n + 1 :]) if n > 1 else ()
            banned = [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i : i + n - 1]) == prefix]
            scores[row, banned] = -np.inf
    if sequences.shape[1] - 1 < opts.min_new_tokens:
        scores[:, eos] = -np.inf
    return scores


def _warp_and_sample(scores: np.ndarray, opts: GenerationOptions, rng: np.random.Generator) -> np.ndarray:
    """Temperature, top-k, top-p (transformers' warpers, same order), then one draw per row."""
    scores = scores / np.float32(opts.temperature)
    if 0 < opts.top_k < scores.shape[-1]:
        kth = -np.partition(-scores, opts.top_k - 1, axis=-1)[:, opts.top_k - 1 : opts.top_k]
        scores = np.where(scores < kth, -np.inf, scores)
    if opts.top_p < 1.0:
        order = np.argsort(scores, axis=-1, kind="stable")
        ascending = np.take_along_axis(scores, order, axis=-1)
        probs = softmax_terms(ascending - ascending[:, -1:])
        cumulative = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)
        remove = cumulative <= 1 - opts.top_p
        remove[:, -1] = False
        np.put_along_axis(scores, order, np.where(remove, -np.inf, ascending), axis=-1)
    probs = softmax_terms(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random((scores.shape[0], 1)) * cumulative[:, -1:]
    return np.minimum((cumulative < draws).sum(axis=-1), scores.shape[-1] - 1)


def choose_tokens(
    sequences: np.ndarray, scores: np.ndarray, opts: GenerationOptions, eos: int, rng: np.random.Generator
) -> np.ndarray:
    """The next token of each row from one step's logits: greedy, or sampled with `do_sample`.

    Args:
        sequences: Decoder tokens so far (rows, length), start token included.
        scores: float32 logits (rows, vocab); modified in place.
        rng: The sampler's generator (one draw per row and step).
    """
    scores = process_scores(sequences, scores, opts, eos)
    return _warp_and_sample(scores, opts, rng) if opts.do_sample else scores.argmax(axis=-1)


def greedy_tokens(
    graphs: T5Graphs, state: DecoderState, opts: GenerationOptions, start: int, eos: int, pad: int
) -> Iterator[np.ndarray]:
    """Yield the next token of every row, step by step (greedy, or sampling with `do_sample`).

    Rows that have finished get `pad`; the iterator ends when every row has produced `eos`
    or `max_new_tokens` were generated. Each step's tokens are a view of the search's own
    array: read them, don't change them.
    """
    # Every numpy call here runs with cold caches (each step streams the decoder's weights through
    # them) and costs 10-30 us, not 1: the loop keeps to a few calls a step, on preallocated arrays.
    rows = state.rows
    sequences = np.full((rows, 1 + opts.max_new_tokens), start, dtype=np.int64)
    finished = np.zeros(rows, dtype=bool)
    any_finished = False
    rng = np.random.default_rng(opts.seed)
    for length in range(1, 1 + opts.max_new_tokens):
        scores = graphs.step(state, sequences[:, length - 1]).astype(np.float32, copy=False)  # fresh: ours to change
        tokens = sequences[:, length]
        tokens[:] = choose_tokens(sequences[:, :length], scores, opts, eos, rng)
        if any_finished:
            tokens[finished] = pad
        finished |= tokens == eos
        yield tokens
        any_finished = bool(finished.any())
        if any_finished and finished.all():
            return


def beam_search(
    graphs: T5Graphs, state: DecoderState, opts: GenerationOptions, start: int, eos: int
) -> list[list[int]]:
    """The best beam of every row, start token excluded, ending at `eos` where one was produced."""
    batch, beams = state.rows, opts.num_beams
    keep = 2 * beams  # transformers keeps (1 + number of eos ids) * num_beams candidates, at least 2 * num_beams
    top_mask = np.arange(keep) < beams
    max_length = 1 + opts.max_new_tokens
    state.repeat(beams)

    running = np.full((batch, beams, max_length), eos, dtype=np.int64)
    running[:, :, 0] = start
    finished_seqs = running.copy()
    running_scores = np.zeros((batch, beams), dtype=np.float32)
    running_scores[:, 1:] = _NEG
    finished_scores = np.full((batch, beams), _NEG, dtype=np.float32)
    is_finished = np.zeros((batch, beams), dtype=bool)
    improvable = np.ones((batch, 1), dtype=bool)
    rows = np.arange(batch)[:, None]
    cur_len = 1
    while True:
        flat = running[:, :, :cur_len].reshape(batch * beams, cur_len)
        logits = graphs.step(state, flat[:, -1]).astype(np.float32, copy=False)
        top_scores, source_beam, token = beam_candidates(logits, flat, running_scores, opts, eos, keep)
        candidates = running[rows, source_beam]
        candidates[:, :, cur_len] = token
        hits = (token == eos) | (cur_len + 1 >= max_length)

        # the best candidates that did not just finish keep running
        alive_scores = top_scores + hits.astype(np.float32) * _NEG
        best = np.argsort(-alive_scores, axis=1, kind="stable")[:, :beams]
        running = candidates[rows, best]
        running_scores = gather(alive_scores, best)
        parents = gather(source_beam, best)

        # the candidates that did finish compete, length-normalised, for the finished slots
        just_finished = hits & top_mask[None, :]
        done_scores = top_scores / np.float32(cur_len**opts.length_penalty)
        full = is_finished.all(axis=-1, keepdims=True) & opts.early_stopping
        done_scores = done_scores + full.astype(np.float32) * _NEG
        done_scores = done_scores + (~improvable).astype(np.float32) * _NEG
        done_scores = done_scores + (~just_finished).astype(np.float32) * _NEG
        merged_scores = np.concatenate([finished_scores, done_scores], axis=1)
        pick = np.argsort(-merged_scores, axis=1, kind="stable")[:, :beams]
        finished_seqs = np.concatenate([finished_seqs, candidates], axis=1)[rows, pick]
        finished_scores = gather(merged_scores, pick)
        is_finished = gather(np.concatenate([is_finished, just_finished], axis=1), pick)

        state.reorder((parents + np.arange(batch)[:, None] * beams).reshape(-1))
        cur_len += 1
        # transformers' heuristic for a bool `early_stopping`: the best running beam at its current length
        best_running = running_scores[:, :1] / np.float32((cur_len - 1) ** opts.length_penalty)
        worst_finished = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), np.float32(-1.0e9))
        improvable = improvable & (best_running > worst_finished).any(axis=-1, keepdims=True)
        open_beams = not (is_finished.all() and opts.early_stopping is True)
        if not (improvable.any() and open_beams and not hits.all()):
            break

    return [until_eos(tokens, eos) for tokens in finished_seqs[:, 0, 1:].tolist()]
