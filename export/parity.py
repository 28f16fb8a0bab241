"""Parity of an artifact against its PyTorch checkpoint: same questions, same greedy settings."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edgeqa.errors import ExportError, ModelError
from edgeqa.manifest import ParityRecord
from edgeqa.metrics import exact_match, rouge
from edgeqa.prompt import format_prompt
from edgeqa.records import QARecord
from edgeqa.runtime import GenerationOptions, QAModel
from edgeqa.runtime.generate import until_eos

logger = logging.getLogger(__name__)

FP32_MIN_IDENTICAL = 0.99
QUANTIZED_MAX_ROUGE_L_DELTA = 0.01


def _token_agreement(a: list[int], b: list[int]) -> tuple[int, int]:
    same = sum(x == y for x, y in zip(a, b, strict=False))  # answers may differ in length
    return same, max(len(a), len(b), 1)


def reference_answers(
    checkpoint: str | Path, prompts: list[str], max_input_tokens: int, batch_size: int, **generate_options: Any
) -> tuple[list[list[int]], float]:
    """Answers of the PyTorch checkpoint with transformers' `generate` (greedy unless options say
    otherwise): token ids, end-of-answer included, and the mean ms per question."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint).eval()
    except OSError as e:
        raise ModelError(f"cannot load the reference checkpoint {checkpoint!r}: {e}") from e
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


def check_tokenizer(checkpoint: str | Path, model: QAModel, prompts: list[str], questions: list[str]) -> None:
    """Fail unless the artifact's tokenizer.json gives the checkpoint tokenizer's ids on every prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    expected = tokenizer(prompts, truncation=True, max_length=model.manifest.max_input_tokens)["input_ids"]
    actual = model.tokenizer.encode(questions)
    differ = sum(a != b for a, b in zip(actual, expected, strict=True))
    if differ:
        raise ExportError(
            f"tokenizer.json gives other ids than the checkpoint's tokenizer on {differ} of {len(questions)} "
            "prompts; save the checkpoint with a fast tokenizer (tokenizer.json) and export again"
        )


def run_parity(
    checkpoint: str,
    artifact: Path,
    records: list[QARecord],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    threads: int | None = None,
) -> ParityRecord:
    """Check the tokenizer, answer `records` with the checkpoint and with the artifact, apply the gate."""
    model = QAModel.load(artifact, threads=threads, verify=False)
    questions = [r.question for r in records]
    references = [r.answer for r in records]
    prompts = [format_prompt(q, model.manifest.prompt_template) for q in questions]
    check_tokenizer(checkpoint, model, prompts, questions)
    logger.debug("parity: PyTorch answers %d questions", len(records))
    expected, reference_ms = reference_answers(
        checkpoint, prompts, model.manifest.max_input_tokens, batch_size, max_new_tokens=max_new_tokens
    )
    logger.debug("parity: the artifact answers %d questions", len(records))
    started = time.perf_counter()
    # GenerationOptions' own defaults are plain greedy search, as `generate` runs above.
    answers = model.answer_batch(questions, GenerationOptions(max_new_tokens=max_new_tokens), batch_size=batch_size)
    artifact_ms = (time.perf_counter() - started) * 1000 / max(len(records), 1)

    reference_texts = [model.tokenizer.decode(ids) for ids in expected]
    artifact_texts = [a.text for a in answers]
    reference_rouge = rouge(reference_texts, references)
    artifact_rouge = rouge(artifact_texts, references)
    identical = sum(a.tokens == e for a, e in zip(answers, expected, strict=True)) / len(records)
    same = total = 0
    for a, e in zip(answers, expected, strict=True):
        s, t = _token_agreement(a.tokens, e)
        same, total = same + s, total + t
    delta = artifact_rouge["rougeL"] - reference_rouge["rougeL"]
    quantization = model.manifest.quantization
    if quantization:
        gate = f"{quantization.weight_type}: |ROUGE-L difference| <= {QUANTIZED_MAX_ROUGE_L_DELTA * 100:.1f} points"
        passed = abs(delta) <= QUANTIZED_MAX_ROUGE_L_DELTA
    else:
        gate = f"fp32: identical answers >= {FP32_MIN_IDENTICAL * 100:.0f}%"
        passed = identical >= FP32_MIN_IDENTICAL
    return ParityRecord(
        samples=len(records),
        quantized=quantization is not None,
        reference_rouge=reference_rouge,
        artifact_rouge=artifact_rouge,
        rouge_l_delta=delta,
        identical_answers=identical,
        token_agreement=same / max(total, 1),
        reference_exact_match=exact_match(reference_texts, references),
        artifact_exact_match=exact_match(artifact_texts, references),
        reference_ms=reference_ms,
        artifact_ms=artifact_ms,
        passed=passed,
        gate=gate,
        max_new_tokens=max_new_tokens,
    )
