"""The numpy primitives of the decoder's searches: logits processors, sampling, beam candidates.

The decoder (`runtime/decoder.py`, `runtime/cohorts.py`) steps the graphs and calls these. The
search rules follow transformers' `generate` (4.57) step for step, so that float graphs give the
same tokens as the PyTorch model: same logits processors in the same order, same beam
bookkeeping (2 * num_beams candidates, length-normalised finished hypotheses, the same
early-stopping heuristic).
"""

from __future__ import annotations

import numpy as np

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


def _warp_and_sample(scores: np.ndarray, opts: GenerationOptions, draws: np.ndarray) -> np.ndarray:
    """Temperature, top-k, top-p (transformers' warpers, same order), then one draw in [0, 1) per row.

    The temperature divides scores shifted to a maximum of 0 (softmax is the same), in float64, so
    that any accepted temperature stays finite: a tiny one leaves only the best tokens (greedy), a
    huge one makes every allowed token equally likely.
    """
    scores = ((scores - scores.max(axis=-1, keepdims=True)) / np.float64(opts.temperature)).astype(np.float32)
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
    return np.minimum((cumulative < draws.reshape(-1, 1) * cumulative[:, -1:]).sum(axis=-1), scores.shape[-1] - 1)


def choice_key(opts: GenerationOptions) -> tuple:
    """The options that decide how a row chooses its next token: rows with equal keys choose in one call."""
    return (
        opts.do_sample,
        opts.temperature,
        opts.top_k,
        opts.top_p,
        opts.min_new_tokens,
        opts.no_repeat_ngram_size,
        opts.repetition_penalty,
    )


def choose_tokens(
    sequences: np.ndarray,
    scores: np.ndarray,
    opts: GenerationOptions,
    eos: int,
    rngs: list[np.random.Generator] | None = None,
) -> np.ndarray:
    """The next token of each row from one step's logits: greedy, or sampled with `do_sample`.

    Args:
        sequences: Decoder tokens so far (rows, length), start token included.
        scores: float32 logits (rows, vocab); modified in place.
        rngs: With `do_sample`, each row's own generator (one draw per row and step), so that a
            seeded row samples the same tokens whatever it is batched with.
    """
    scores = process_scores(sequences, scores, opts, eos)
    if not opts.do_sample:
        return scores.argmax(axis=-1)
    if rngs is None or len(rngs) != scores.shape[0]:
        raise ValueError("sampling needs one generator per row")
    draws = np.array([rng.random() for rng in rngs])
    return _warp_and_sample(scores, opts, draws)
