"""The index the reading benchmark asks: the bundled QA answers indexed as `edgeqa index` indexes files,
and a question whose top passages are exactly the passages the benchmark reads.

The benchmark's passages are the bundled validation answers packed by the indexer's splitter
(`edgeqa.bench.reading.reading_passages`). The same answers, written as a text file (one paragraph
each) and indexed by `build_index` with the same passage budget and the default overlap, become the
same passages, among the others the answers make. The question is a keyword question, "What about
w1, w2, w3 and w4?": each word is in read passages only (the index's own search says so, stemming
included), and every read passage holds one, so the question's top passages are the read ones,
whatever BM25 would make of a natural question.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgeqa.errors import ConfigError

_WORD = re.compile(r"[^\W\d_]+")  # letters only: a word that reads as one in a question


def bundled_answers() -> list[str]:
    """The bundled validation answers, one line each (as `reading_passages` splits them)."""
    from edgeqa.records import read_records, sample_data

    return [r.answer.replace("\n", " ") for r in read_records(sample_data("validation"))]


def build_reading_index(folder: Path, tokenizer: Path, passage_tokens: int) -> tuple[Path, int]:
    """Index the bundled answers (written to `folder/documents/answers.txt`) into `folder/index.sqlite`.

    Returns:
        The index file and how many passages it holds.
    """
    from edgeqa.documents import build_index

    documents = folder / "documents"
    documents.mkdir(parents=True, exist_ok=True)
    (documents / "answers.txt").write_text("\n\n".join(bundled_answers()) + "\n", encoding="utf-8")
    output = folder / "index.sqlite"
    summary = build_index([documents], output, tokenizer, passage_tokens=passage_tokens)
    return output, summary.passages


def keyword_question(index_path: Path, passages: list[str]) -> str:
    """A question whose search returns exactly `passages`.

    Raises:
        ConfigError: a passage is not in the index, or has no word that only the read passages hold.
    """
    from edgeqa.documents import Index

    read = set(passages)
    with Index.open(index_path) as index:
        words: list[str] = []
        covered: set[str] = set()
        for number, text in enumerate(passages, 1):
            if text in covered:  # an earlier passage's word finds it too
                continue
            for word in dict.fromkeys(w.lower() for w in _WORD.findall(text)):
                found = {p.text for p in index.search(word, len(passages) + 1)} if len(word) >= 4 else set()
                if text in found and found <= read:
                    words.append(word)
                    covered |= found
                    break
            else:
                raise ConfigError(f"passage {number} has no word that no other passage of {index_path} holds")
        question = (
            f"What about {', '.join(words[:-1])} and {words[-1]}?" if len(words) > 1 else f"What about {words[0]}?"
        )
        top = [p.text for p in index.search(question, len(passages))]
        if sorted(top) != sorted(passages):
            raise ConfigError(f"the top {len(passages)} passages of {question!r} in {index_path} are not the read ones")
    return question
