"""Parity of an artifact against its PyTorch checkpoint: same questions, same greedy settings."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edgeqa.checkpoint import heldout_path
from edgeqa.errors import ConfigError, ExportError
from edgeqa.export.loading import load_model, load_tokenizer
from edgeqa.manifest import ParityRecord
from edgeqa.metrics import exact_match, rouge
from edgeqa.prompt import format_prompt
from edgeqa.records import QARecord, read_records, sample_data
from edgeqa.runtime import Answer, GenerationOptions, QAModel, until_eos

logger = logging.getLogger(__name__)

FP32_MIN_IDENTICAL = 0.99
QUANTIZED_MAX_ROUGE_L_DELTA = 0.01
#: Where the references are short answers, the artifact's exact match may fall this much below PyTorch's.
QUANTIZED_MAX_EXACT_MATCH_DROP = 0.01
SHORT_ANSWER_WORDS = 5


def _token_agreement(a: list[int], b: list[int]) -> tuple[int, int]:
    same = sum(x == y for x, y in zip(a, b, strict=False))  # answers may differ in length
    return same, max(len(a), len(b), 1)


def reference_answers(
    checkpoint: str | Path, prompts: list[str], max_input_tokens: int, batch_size: int, **generate_options: Any
) -> tuple[list[list[int]], float]:
    """Answers of the PyTorch checkpoint with transformers' `generate` (greedy unless options say
    otherwise): token ids, end-of-answer included, and the mean ms per question."""
    import torch

    tokenizer, model = load_tokenizer(checkpoint), load_model(checkpoint)
    eos = model.config.eos_token_id
    answers: list[list[int]] = []
    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[first : first + batch_size],
                padding=True,
                truncation=True,
                max_length=max_input_tokens,
                return_tensors="pt",
            )
            output = model.generate(**batch, **({"num_beams": 1, "do_sample": False} | generate_options))
            answers += [until_eos(row, eos) for row in output[:, 1:].tolist()]
    return answers, (time.perf_counter() - started) * 1000 / max(len(prompts), 1)


def check_tokenizer(checkpoint: str | Path, model: QAModel, prompts: list[str], records: list[QARecord]) -> None:
    """Fail unless the artifact's tokenizer.json gives the checkpoint tokenizer's ids on every prompt."""
    tokenizer = load_tokenizer(checkpoint)
    expected = tokenizer(prompts, truncation=True, max_length=model.manifest.max_input_tokens)["input_ids"]
    actual = model.tokenizer.encode([r.question for r in records], [r.context for r in records])
    differ = sum(a != b for a, b in zip(actual, expected, strict=True))
    if differ:
        raise ExportError(
            f"tokenizer.json gives other ids than the checkpoint's tokenizer on {differ} of {len(records)} "
            "prompts; save the checkpoint with a fast tokenizer (tokenizer.json) and export again"
        )


class ParityCheck:
    """The gate: the checkpoint's answers (computed once) against any number of artifacts'.

    Args:
        checkpoint: The PyTorch checkpoint.
        records: Held-out questions with reference answers.
        max_new_tokens: Answer length of both sides.
        batch_size: Questions per batch on both sides.
        threads: Runtime threads.
    """

    def __init__(
        self,
        checkpoint: str,
        records: list[QARecord],
        max_new_tokens: int = 64,
        batch_size: int = 16,
        threads: int | None = None,
    ):
        if not records:
            raise ConfigError("the parity gate needs at least 1 question with a reference answer")
        if max_new_tokens < 1:
            raise ConfigError(f"the parity gate's answers need at least 1 new token, got {max_new_tokens}")
        self.checkpoint, self.records = checkpoint, records
        self.max_new_tokens, self.batch_size, self.threads = max_new_tokens, batch_size, threads
        self.prompts: list[str] = []
        self.expected: list[list[int]] = []
        self.max_input_tokens = 0
        self._reference_ms = 0.0

    def run(self, artifact: Path, indices: list[int] | None = None, split: str = "all") -> ParityRecord:
        """Answer the questions at `indices` (default all) with the artifact; compare; apply the gate."""
        model = QAModel.load(artifact, threads=self.threads, verify=False)
        questions = [r.question for r in self.records]
        contexts = [r.context for r in self.records]
        if not self.expected:
            manifest = model.manifest
            self.prompts = [
                format_prompt(r.question, manifest.prompt_template, r.context, manifest.context_template)
                for r in self.records
            ]
            self.max_input_tokens = manifest.max_input_tokens
            check_tokenizer(self.checkpoint, model, self.prompts, self.records)
            logger.debug("parity: PyTorch answers %d questions", len(questions))
            self.expected, self._reference_ms = reference_answers(
                self.checkpoint,
                self.prompts,
                model.manifest.max_input_tokens,
                self.batch_size,
                max_new_tokens=self.max_new_tokens,
            )
        picked = list(range(len(questions))) if indices is None else indices
        logger.debug("parity: the artifact answers %d questions", len(picked))
        started = time.perf_counter()
        # GenerationOptions' own defaults are plain greedy search, as `generate` runs above.
        answers = model.answer_batch(
            [questions[i] for i in picked],
            GenerationOptions(max_new_tokens=self.max_new_tokens),
            batch_size=self.batch_size,
            contexts=[contexts[i] for i in picked],
        )
        artifact_ms = (time.perf_counter() - started) * 1000 / max(len(picked), 1)
        expected = [self.expected[i] for i in picked]
        references = [self.records[i].answer for i in picked]
        return _compare(
            model, answers, expected, references, self._reference_ms, artifact_ms, self.max_new_tokens, split
        )


def parity_records(checkpoint: str | Path, data: str | Path | None, samples: int) -> list[QARecord]:
    """The gate's questions: the first `samples` of `data`, else of the checkpoint's held-out split
    (`edgeqa finetune` saves it beside the weights), else of the bundled validation sample.

    Raises:
        ConfigError: `samples` below 1.
        DataError: the file is missing, empty or unreadable.
    """
    if samples < 1:
        raise ConfigError(f"the parity gate needs at least 1 question, got samples={samples}")
    path = data or heldout_path(checkpoint) or sample_data("validation")
    records = read_records(Path(path))[:samples]
    logger.info("parity: PyTorch and the artifact answer %d questions from %s", len(records), path)
    return records


def run_parity(
    checkpoint: str,
    artifact: Path,
    records: list[QARecord],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    threads: int | None = None,
) -> ParityRecord:
    """Check the tokenizer, answer `records` with the checkpoint and with the artifact, apply the gate."""
    return ParityCheck(checkpoint, records, max_new_tokens, batch_size, threads).run(artifact)


def short_answers(references: list[str]) -> bool:
    """Whether the references are short answers (exact match then means something): nine in ten at
    most `SHORT_ANSWER_WORDS` words."""
    short = sum(len(r.split()) <= SHORT_ANSWER_WORDS for r in references)
    return bool(references) and short >= 0.9 * len(references)


def within(value: float, bound: float) -> bool:
    """`value <= bound` up to float rounding: one answer in 100 is a difference of 0.01 exactly, which the
    difference of two float means can exceed by a rounding error."""
    return value <= bound + 1e-9


def apply_gate(
    weight_type: str | None,
    rouge_l_delta: float,
    identical: float,
    reference_em: float,
    artifact_em: float,
    references: list[str],
) -> tuple[bool, str]:
    """(passed, the rule): float graphs must give identical answers; quantized ones the same ROUGE-L
    within a point and, where the references are short answers, no more than a point less exact match."""
    if not references:  # nothing compared, nothing shown
        return False, "no questions answered"
    if weight_type is None:
        return identical >= FP32_MIN_IDENTICAL, f"fp32: identical answers >= {FP32_MIN_IDENTICAL * 100:.0f}%"
    gate = f"{weight_type}: |ROUGE-L difference| <= {QUANTIZED_MAX_ROUGE_L_DELTA * 100:.1f} points"
    passed = within(abs(rouge_l_delta), QUANTIZED_MAX_ROUGE_L_DELTA)
    if short_answers(references):
        gate += f", exact match at most {QUANTIZED_MAX_EXACT_MATCH_DROP * 100:.1f} point below PyTorch's"
        passed = passed and within(reference_em - artifact_em, QUANTIZED_MAX_EXACT_MATCH_DROP)
    return passed, gate


def _compare(
    model: QAModel,
    answers: list[Answer],
    expected: list[list[int]],
    references: list[str],
    reference_ms: float,
    artifact_ms: float,
    max_new_tokens: int,
    split: str,
) -> ParityRecord:
    reference_texts = [model.tokenizer.decode(ids) for ids in expected]
    artifact_texts = [a.text for a in answers]
    reference_rouge = rouge(reference_texts, references)
    artifact_rouge = rouge(artifact_texts, references)
    reference_em = exact_match(reference_texts, references)
    artifact_em = exact_match(artifact_texts, references)
    identical = sum(a.tokens == e for a, e in zip(answers, expected, strict=True)) / max(len(answers), 1)
    same = total = 0
    for a, e in zip(answers, expected, strict=True):
        s, t = _token_agreement(a.tokens, e)
        same, total = same + s, total + t
    delta = artifact_rouge["rougeL"] - reference_rouge["rougeL"]
    quantization = model.manifest.quantization
    weight_type = quantization.weight_type if quantization else None
    passed, gate = apply_gate(weight_type, delta, identical, reference_em, artifact_em, references)
    return ParityRecord(
        samples=len(answers),
        quantized=weight_type is not None,
        reference_rouge=reference_rouge,
        artifact_rouge=artifact_rouge,
        rouge_l_delta=delta,
        identical_answers=identical,
        token_agreement=same / max(total, 1),
        reference_exact_match=reference_em,
        artifact_exact_match=artifact_em,
        reference_ms=reference_ms,
        artifact_ms=artifact_ms,
        passed=passed,
        gate=gate,
        max_new_tokens=max_new_tokens,
        split=split,
    )
