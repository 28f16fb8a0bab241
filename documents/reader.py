"""Answers from an index: the top passages of a question, read in one batch, the best reading kept.

The reader reads each of the question's top `k` passages (BM25) in one batch through the runtime's
decoder; `edgeqa.documents.answers.choose` keeps the answer with the best joint score of reader and
retrieval. `edgeqa serve --index` builds the same rows with `reading_rows` and chooses through
`read_all`, so a served answer is `DocumentsQA`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeqa.documents.answers import RETRIEVAL_WEIGHT, Candidate, DocumentAnswer, check_retrieval_weight, choose
from edgeqa.documents.query import DEFAULT_K, Index, Passage, check_k
from edgeqa.documents.sizing import reader_passage_tokens
from edgeqa.documents.store import fingerprints, load_tokenizer
from edgeqa.errors import ConfigError, InputError
from edgeqa.prompt import NO_ANSWER
from edgeqa.runtime.inputs import check_batch, check_question, whole_number

if TYPE_CHECKING:  # the runtime loads onnxruntime: only `DocumentsQA.open` needs it
    from edgeqa.manifest import Manifest
    from edgeqa.runtime import Decoder, GenerationOptions, QAModel, Row

logger = logging.getLogger(__name__)


def reading_rows(
    decoder: Decoder, question: str, passages: Sequence[Passage], options: GenerationOptions, stop: tuple[str, ...] = ()
) -> tuple[list[Row | None], list[str]]:
    """A scored decoder row for each passage the question can be read with, and why the others cannot.

    Returns:
        One row per passage (None where it cannot be read) and one error message per passage ("" if none).

    Raises:
        InputError: the question itself is unusable (not a string, empty).
    """
    from edgeqa.runtime import Row

    decoder.prompts([question])  # the question's own faults are the caller's error, not a passage's
    rows: list[Row | None] = []
    errors: list[str] = []
    for passage in passages:
        try:
            [(ids, _)] = decoder.prompts([question], [passage.text])
        except InputError as e:
            rows.append(None)
            errors.append(str(e))
            continue
        rows.append(Row(ids, options, stop=stop, scored=True))
        errors.append("")
    return rows, errors


def read_all(
    planned: Sequence[tuple[str, Sequence[Passage], Sequence[Row | None], Sequence[str]]],
    no_answer: str = NO_ANSWER,
    retrieval_weight: float = RETRIEVAL_WEIGHT,
) -> list[DocumentAnswer]:
    """Each question's answer once its rows have finished: `(question, passages, rows, errors)` per question."""
    return [
        choose(
            question,
            [Candidate.read(p, row, error) for p, row, error in zip(passages, rows, errors, strict=True)],
            no_answer,
            retrieval_weight,
        )
        for question, passages, rows, errors in planned
    ]


class DocumentsQA:
    """Questions answered from an index of documents by a reader artifact (see the module's docstring).

    Args:
        model: The reader.
        index: The index of passages.
        k: Passages read per question.
        retrieval_weight: How much the passage's retrieval log-probability counts beside the reader's
            score (0: the reader's score alone; `edgeqa.documents.answers`).
    """

    def __init__(self, model: QAModel, index: Index, k: int = DEFAULT_K, retrieval_weight: float = RETRIEVAL_WEIGHT):
        self.model, self.index, self.k = model, index, check_k(k)
        self.retrieval_weight = check_retrieval_weight(retrieval_weight)
        warn_if_sized_for_another(index, model.folder, model.manifest)

    @classmethod
    def open(
        cls,
        artifact: str | Path,
        index: str | Path,
        k: int = DEFAULT_K,
        retrieval_weight: float = RETRIEVAL_WEIGHT,
        **load: Any,
    ) -> DocumentsQA:
        """Load the reader artifact (`QAModel.load`'s keyword arguments in `load`) and open the index.

        Raises:
            ArtifactError: the artifact is not a complete, intact artifact.
            DataError: the index is missing, damaged or of another format.
        """
        from edgeqa.runtime import QAModel

        check_k(k), check_retrieval_weight(retrieval_weight)
        return cls(QAModel.load(artifact, **load), Index.open(index), k, retrieval_weight)

    def ask(self, question: str, options: GenerationOptions | None = None, k: int | None = None) -> DocumentAnswer:
        """Answer one question from the index's top `k` passages (default: this object's `k`)."""
        return self.ask_batch([question], options, k)[0]

    def ask_batch(
        self,
        questions: Sequence[str],
        options: GenerationOptions | None = None,
        k: int | None = None,
        batch_size: int = 8,
    ) -> list[DocumentAnswer]:
        """Answer questions `batch_size` at a time, every passage of a batch's questions read together.

        Raises:
            InputError: `questions` that is one string (`ask()` asks one), a question that is not a string
                or is empty, a bad option or `batch_size`, or a question none of whose passages can be read.
            DataError: the index cannot be read.
        """
        questions = check_batch(questions, "ask_batch", "questions", "use ask() for one")
        for question in questions:  # before any is searched or read
            check_question(question)
        whole_number(batch_size, "batch_size", 1)
        k = check_k(self.k if k is None else k)
        opts = self.model.options(options)
        answers: list[DocumentAnswer] = []
        for first in range(0, len(questions), batch_size):
            answers += self._read(list(questions[first : first + batch_size]), opts, k)
        return answers

    def _read(
        self, questions: list[str], options: GenerationOptions, k: int, lap: Callable[[str], None] = lambda step: None
    ) -> list[DocumentAnswer]:
        """The questions' answers; `lap(step)` is called as each step ends (the reading benchmark times them)."""
        decoder = self.model.decoder()
        found = [self.index.search(question, k) for question in questions]
        lap("search")
        planned = [
            (q, passages, *reading_rows(decoder, q, passages, options))
            for q, passages in zip(questions, found, strict=True)
        ]
        lap("prompts")
        decoder.join([row for _, _, rows, _ in planned for row in rows if row is not None])
        decoder.run()
        lap("read")
        answers = read_all(planned, self.model.manifest.no_answer, self.retrieval_weight)
        lap("choice")
        return answers

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> DocumentsQA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def warn_if_sized_for_another(index: Index, artifact: Path, manifest: Manifest) -> bool:
    """Warn (and say so) when the index's passages were measured with another tokenizer than the reader's, or
    sized for a longer input than the reader's: a passage that does not fit beside a question is skipped."""
    fix = f"`edgeqa index ... --artifact {artifact}` sizes passages for it"
    path = Path(artifact) / manifest.files["tokenizer"].path
    tokenizer = load_tokenizer(path)  # once, for the fingerprint and the size
    if index.info.tokenizer_sha256 not in fingerprints(path, tokenizer):
        logger.warning(
            "%s was sized with the tokenizer of %s, not this reader's: a passage that does not fit the reader's "
            "input is skipped; %s",
            index.path,
            index.info.tokenizer_name,
            fix,
        )
        return True
    try:
        readable = reader_passage_tokens(manifest, tokenizer)
    except ConfigError:  # the reader's input has no room for any passage: each question says so
        return False
    if index.info.passage_tokens <= readable:
        return False
    logger.warning(
        "%s holds passages of up to %d tokens, this reader reads %d beside a question: a longer one is skipped "
        "where the question leaves it no room; %s",
        index.path,
        index.info.passage_tokens,
        readable,
        fix,
    )
    return True
