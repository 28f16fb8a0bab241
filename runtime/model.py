"""`QAModel`: answers questions from an artifact folder with onnxruntime, tokenizers and numpy."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeqa.errors import ArtifactError, InputError
from edgeqa.manifest import Manifest
from edgeqa.runtime.generate import beam_search, greedy_tokens, until_eos
from edgeqa.runtime.graphs import T5Graphs
from edgeqa.runtime.options import GenerationOptions
from edgeqa.runtime.tokenizer import PromptTokenizer

logger = logging.getLogger(__name__)

# Prompts are padded to a multiple of this many tokens: onnxruntime's float MatMul sums the
# cross-attention over the encoder positions in groups, and a last group of 3 is summed in another
# order than a full group. With whole groups only, the zeros that padding adds leave every sum
# unchanged, so a prompt gets the same numbers however much padding its batch gives it.
PAD_MULTIPLE = 4


@dataclass(frozen=True)
class Answer:
    """One generated answer.

    Attributes:
        text: The answer, special tokens removed.
        tokens: Answer token ids (end-of-answer included when the model produced it).
        prompt_tokens: Prompt length in tokens after truncation.
        encode_ms: Tokenization time (for a batch: the batch's, shared by its answers).
        generate_ms: Model time, encoder and decoder (likewise shared in a batch).
    """

    text: str
    tokens: list[int]
    prompt_tokens: int
    encode_ms: float
    generate_ms: float

    @property
    def answer_tokens(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "answer_tokens": self.answer_tokens,
            "prompt_tokens": self.prompt_tokens,
            "encode_ms": round(self.encode_ms, 2),
            "generate_ms": round(self.generate_ms, 2),
        }


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
        """
        folder = Path(path)
        manifest = Manifest.read(folder, expect_sha256=expect_sha256)
        manifest.verify_files(folder, checksums=verify)
        graphs = T5Graphs(folder, manifest, threads=threads, session_config=session_config)
        tokenizer = PromptTokenizer(folder / manifest.files["tokenizer"].path, manifest)
        return cls(folder, manifest, graphs, tokenizer)

    def options(self, options: GenerationOptions | None = None, **overrides: Any) -> GenerationOptions:
        """`options` (default: the artifact's defaults) with `overrides` applied; None keeps a value.

        Raises:
            InputError: an unknown option or a value out of range, naming it.
        """
        return (options or self.defaults).updated(**overrides)

    def answer(self, question: str, options: GenerationOptions | None = None, **overrides: Any) -> Answer:
        """Answer one question; `overrides` are `GenerationOptions` fields."""
        return self._generate([question], self.options(options, **overrides))[0]

    def answer_batch(
        self,
        questions: Sequence[str],
        options: GenerationOptions | None = None,
        batch_size: int = 8,
        **overrides: Any,
    ) -> list[Answer]:
        """Answer many questions, `batch_size` at a time (rows stop at their own end-of-answer)."""
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        opts = self.options(options, **overrides)
        answers: list[Answer] = []
        for first in range(0, len(questions), batch_size):
            answers += self._generate(list(questions[first : first + batch_size]), opts)
        return answers

    def stream(self, question: str, options: GenerationOptions | None = None, **overrides: Any) -> Iterator[str]:
        """Yield the answer's text piece by piece as tokens are generated.

        Beam search only knows its answer at the end, so it yields it once.
        """
        opts = self.options(options, **overrides)
        if opts.num_beams > 1:
            yield self._generate([question], opts)[0].text
            return
        ids, mask = self._encode_inputs([question])
        state = self.graphs.encode(ids, mask)
        special = self.manifest.special_tokens
        tokens: list[int] = []
        shown = ""
        for step in greedy_tokens(self.graphs, state, opts, special.decoder_start, special.eos, special.pad):
            tokens.append(int(step[0]))
            text = self.tokenizer.decode(tokens)
            if text.startswith(shown) and len(text) > len(shown):
                yield text[len(shown) :]
                shown = text

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], options: GenerationOptions | None = None, **overrides: Any
    ) -> list[list[int]]:
        """Answer token ids for already tokenized prompts, as one batch (for benchmarks and tools)."""
        if not prompt_ids or any(len(ids) == 0 for ids in prompt_ids):
            raise InputError("every prompt needs at least one token id")
        input_ids, mask = self._pad(prompt_ids)
        return self._search(input_ids, mask, self.options(options, **overrides))

    def _pad(self, encoded: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = -(-max(len(ids) for ids in encoded) // PAD_MULTIPLE) * PAD_MULTIPLE
        pad = self.manifest.special_tokens.pad
        input_ids = np.full((len(encoded), width), pad, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return input_ids, mask

    def _encode_inputs(self, questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._pad(self.tokenizer.encode(questions))

    def _search(self, input_ids: np.ndarray, mask: np.ndarray, opts: GenerationOptions) -> list[list[int]]:
        special = self.manifest.special_tokens
        state = self.graphs.encode(input_ids, mask)
        if opts.num_beams > 1:
            return beam_search(self.graphs, state, opts, special.decoder_start, special.eos)
        steps = list(greedy_tokens(self.graphs, state, opts, special.decoder_start, special.eos, special.pad))
        return [until_eos(row, special.eos) for row in np.stack(steps, axis=1).tolist()]

    def _generate(self, questions: list[str], opts: GenerationOptions) -> list[Answer]:
        if not questions:
            return []
        started = time.perf_counter()
        input_ids, mask = self._encode_inputs(questions)
        encoded = time.perf_counter()
        sequences = self._search(input_ids, mask, opts)
        finished = time.perf_counter()
        return [
            Answer(
                text=self.tokenizer.decode(tokens),
                tokens=tokens,
                prompt_tokens=int(prompt_mask.sum()),
                encode_ms=(encoded - started) * 1000,
                generate_ms=(finished - encoded) * 1000,
            )
            for tokens, prompt_mask in zip(sequences, mask, strict=True)
        ]
