"""`QAModel`: answers questions from an artifact folder with onnxruntime, tokenizers and numpy."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from edgeqa.errors import ArtifactError, ConfigError, InputError
from edgeqa.manifest import Manifest
from edgeqa.runtime.decoder import Decoder
from edgeqa.runtime.graphs import T5Graphs
from edgeqa.runtime.inputs import check_batch, whole_number
from edgeqa.runtime.options import GenerationOptions
from edgeqa.runtime.rows import FinishReason, Row
from edgeqa.runtime.tokenizer import PromptTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """One generated answer.

    Attributes:
        text: The answer, special tokens removed.
        tokens: Answer token ids (end-of-answer included when the model produced it).
        prompt_tokens: Prompt length in tokens after truncation.
        encode_ms: Tokenization time (for a batch: the batch's, shared by its answers).
        generate_ms: Model time, encoder (its batch's) and decoder until this answer finished.
        finish_reason: "stop" (end of answer, or a stop string) or "length" (max_new_tokens reached).
        score: The answer's length-normalised log-probability, from a `scored` row (else None).
    """

    text: str
    tokens: list[int]
    prompt_tokens: int
    encode_ms: float
    generate_ms: float
    finish_reason: FinishReason = FinishReason.STOP
    score: float | None = None

    @classmethod
    def of(cls, row: Row, encode_ms: float = 0.0) -> Answer:
        """The answer of a finished row."""
        return cls(
            text=row.text,
            tokens=row.tokens,
            prompt_tokens=len(row.ids),
            encode_ms=encode_ms,
            generate_ms=row.encoder_ms + row.decode_ms,
            finish_reason=row.finish_reason or FinishReason.STOP,
            score=row.score,
        )

    @property
    def answer_tokens(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "answer": self.text,
            "answer_tokens": self.answer_tokens,
            "prompt_tokens": self.prompt_tokens,
            "encode_ms": round(self.encode_ms, 2),
            "generate_ms": round(self.generate_ms, 2),
            "finish_reason": str(self.finish_reason),
        }
        if self.score is not None:
            data["score"] = round(self.score, 4)
        return data


class QAModel:
    """A loaded artifact. One instance can serve several threads at once."""

    def __init__(self, folder: Path, manifest: Manifest, graphs: T5Graphs, tokenizer: PromptTokenizer):
        self.folder = folder
        self.manifest = manifest
        self.graphs = graphs
        self.tokenizer = tokenizer
        generation = manifest.generation
        try:
            self.defaults = GenerationOptions(max_new_tokens=generation.max_new_tokens, num_beams=generation.num_beams)
        except InputError as e:
            raise ArtifactError(f"manifest.json: generation {e}; re-export the artifact") from e

    @classmethod
    def load(
        cls,
        path: str | Path,
        threads: int | None = None,
        verify: bool = True,
        session_config: dict[str, str] | None = None,
        expect_sha256: str | None = None,
    ) -> QAModel:
        """Load an artifact folder written by `edgeqa export`.

        Args:
            path: The artifact folder.
            threads: Threads per graph; default: the machine's physical cores.
            verify: Check every file's sha256 against the manifest (sizes are always checked).
            session_config: Extra onnxruntime session config entries, e.g.
                {"session.intra_op.allow_spinning": "0"}.
            expect_sha256: Refuse the artifact unless its manifest.json has this sha256 (the
                manifest lists every file's sha256, so with `verify` this pins every byte).

        Raises:
            ArtifactError: the folder is not a complete, intact artifact of a supported format.
            ConfigError: an argument of the wrong type, or `threads` out of range (naming it).
        """
        if not isinstance(path, str | PathLike):
            raise ConfigError(f"path must be the artifact folder (a str or Path), got {type(path).__name__}")
        if expect_sha256 is not None and not isinstance(expect_sha256, str):
            raise ConfigError(f"expect_sha256 must be a str or None, got {type(expect_sha256).__name__}")
        folder = Path(path)
        manifest = Manifest.read(folder, expect_sha256=expect_sha256)
        manifest.verify_files(folder, checksums=verify)
        graphs = T5Graphs(folder, manifest, threads=threads, session_config=session_config)
        tokenizer = PromptTokenizer(folder / manifest.files["tokenizer"].path, manifest)
        return cls(folder, manifest, graphs, tokenizer)

    def options(self, options: GenerationOptions | None = None, **overrides: Any) -> GenerationOptions:
        """`options` (default: the artifact's defaults) with `overrides` applied; None keeps a value.
        Sampling asked of the defaults without `num_beams` samples with 1 beam, whatever their beam count.

        Raises:
            InputError: `options` that is not a `GenerationOptions`, an unknown option or a value out of
                range, naming it.
        """
        if options is not None and not isinstance(options, GenerationOptions):
            raise InputError(
                f"options must be a GenerationOptions, got {type(options).__name__}; pass "
                "GenerationOptions(num_beams=2) or the fields as keywords (answer(question, num_beams=2))"
            )
        if options is None and overrides.get("do_sample") and overrides.get("num_beams") is None:
            overrides["num_beams"] = 1  # a sample is one answer: the defaults' beam count was not asked for
        return (options or self.defaults).updated(**overrides)

    @property
    def even_rows(self) -> bool:
        """Whether the decoder runs an even number of rows (on for int4 artifacts, whose kernel computes
        rows in pairs and a lone last row another way); turn it off only to measure what it prevents."""
        return self.graphs.even_rows

    @even_rows.setter
    def even_rows(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InputError(f"even_rows must be True or False, got {type(value).__name__} {value!r}")
        self.graphs.even_rows = value

    def decoder(self) -> Decoder:
        """A new decoder over this model (one per thread): rows join, step and leave (`edgeqa.runtime.Decoder`)."""
        return Decoder(self.graphs, self.tokenizer, self.manifest.special_tokens)

    def answer(
        self,
        question: str,
        options: GenerationOptions | None = None,
        context: str | None = None,
        **overrides: Any,
    ) -> Answer:
        """Answer one question, from `context` (a passage to read) when given; `overrides` are
        `GenerationOptions` fields.

        Raises:
            InputError: an empty question or passage, a question and passage over the input limit, or a
                bad option.
        """
        return self._answer([question], self.options(options, **overrides), [context])[0]

    def answer_batch(
        self,
        questions: Sequence[str],
        options: GenerationOptions | None = None,
        batch_size: int = 8,
        contexts: Sequence[str | None] | None = None,
        **overrides: Any,
    ) -> list[Answer]:
        """Answer many questions, `batch_size` at a time (rows leave at their own end-of-answer), each from
        its passage in `contexts` where one is given.

        Raises:
            InputError: `questions` that is one string (`answer()` answers one), a `batch_size` that is not
                a whole number from 1, or what `answer()` refuses.
        """
        questions = check_batch(questions, "answer_batch", "questions", "use answer() for one")
        whole_number(batch_size, "batch_size", 1)
        if contexts is not None:
            contexts = check_batch(contexts, "answer_batch", "contexts", "give one per question (None for none)")
        if contexts is not None and len(contexts) != len(questions):
            raise InputError(f"{len(questions)} questions but {len(contexts)} contexts; give one context per question")
        opts = self.options(options, **overrides)
        answers: list[Answer] = []
        for first in range(0, len(questions), batch_size):
            part = slice(first, first + batch_size)
            answers += self._answer(list(questions[part]), opts, None if contexts is None else list(contexts[part]))
        return answers

    def stream(
        self,
        question: str,
        options: GenerationOptions | None = None,
        context: str | None = None,
        **overrides: Any,
    ) -> Iterator[str]:
        """Yield the answer's text piece by piece as tokens are generated (from `context` when given).

        Beam search only knows its answer at the end, so it yields it once.
        """
        opts = self.options(options, **overrides)
        decoder = self.decoder()
        [(ids, _)] = decoder.prompts([question], [context])
        row = Row(ids, opts, stream=True)
        decoder.join([row])
        while decoder.busy:
            for update in decoder.step():
                if update.delta:
                    yield update.delta
        _raise_failure([row])

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], options: GenerationOptions | None = None, **overrides: Any
    ) -> list[list[int]]:
        """Answer token ids for already tokenized prompts, as one batch (for benchmarks and tools).

        Raises:
            InputError: a prompt that is not a list of integers, without ids, over the input limit, or with
                ids outside the vocabulary.
        """
        opts = self.options(options, **overrides)
        prompts = check_batch(prompt_ids, "generate", "prompts", "give each as a list of token ids")
        rows = [Row(ids, opts) for ids in prompts]
        if not rows:
            raise InputError("every prompt needs at least one token id")
        _run(self.decoder(), rows)
        return [row.tokens for row in rows]

    def _answer(
        self, questions: list[str], opts: GenerationOptions, contexts: list[str | None] | None = None
    ) -> list[Answer]:
        if not questions:
            return []
        started = time.perf_counter()
        decoder = self.decoder()
        rows = [Row(ids, opts) for ids, _ in decoder.prompts(questions, contexts)]
        encode_ms = (time.perf_counter() - started) * 1000
        _run(decoder, rows)
        return [Answer.of(row, encode_ms) for row in rows]


def _run(decoder: Decoder, rows: list[Row]) -> None:
    """Decode rows to their ends, raising the first failure (a caller of the model asked for all of them)."""
    decoder.join(rows)
    decoder.run()
    _raise_failure(rows)


def _raise_failure(rows: list[Row]) -> None:
    for row in rows:
        if row.finish_reason == FinishReason.FAILED and row.error is not None:
            raise row.error
