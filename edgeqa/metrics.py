"""ROUGE as fine-tuning and the parity gate report it (rouge_score, imported on first use).

Scores are deterministic means of per-example F1 (no bootstrap). Words are rouge_score's (lower
case, Porter-stemmed past three letters), but of every script: its own tokenizer keeps only a-z and
0-9, so that "Москва" scored 0 against itself and "Zürich" equal to "Zärich". ROUGE-Lsum needs one sentence
per line: nltk's sentence splitter where its `punkt_tab` data is installed, else a regex
splitter, so nothing is downloaded at run time.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script; rouge_score's words on English text
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@lru_cache(maxsize=1)
def sentence_splitter() -> Callable[[str], list[str]]:
    """nltk's `sent_tokenize` when its data is present, else a split after . ! ? and white space."""
    try:
        import nltk

        nltk.data.find("tokenizers/punkt_tab/english/")
        return nltk.sent_tokenize
    except (ImportError, LookupError):
        return lambda text: [s for s in _SENTENCE_END.split(text) if s]


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F1 of predictions against references, in [0, 1]."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {key: 0.0 for key in ROUGE_KEYS}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), tokenizer=_words_tokenizer())
    split = sentence_splitter()
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        result = scorer.score("\n".join(split(reference.strip())), "\n".join(split(prediction.strip())))
        for key in ROUGE_KEYS:
            totals[key] += result[key].fmeasure
    return {key: totals[key] / len(predictions) for key in ROUGE_KEYS}


@lru_cache(maxsize=1)
def _words_tokenizer() -> Any:
    """rouge_score's default tokenizer with its stemmer, reading words of every script."""
    from rouge_score import tokenizers

    class Words(tokenizers.DefaultTokenizer):  # type: ignore[misc]
        def tokenize(self, text: str) -> list[str]:
            words = _WORD.findall(text.lower())
            return [self._stemmer.stem(word) if len(word) > 3 else word for word in words]

    return Words(use_stemmer=True)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after `normalize_answer`, in [0, 1]."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return 0.0
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(predictions)
