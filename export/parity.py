"""Parity of an artifact against its PyTorch checkpoint: the same questions, decoded with the artifact's
own settings (its beams, its answer length up to the gate's) on both sides."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edgeqa.checkpoint import heldout_path
from edgeqa.errors import ConfigError, ExportError, InputError
from edgeqa.export.config import PARITY_MAX_NEW_TOKENS
from edgeqa.export.loading import encode_prompts, load_model, load_tokenizer
from edgeqa.manifest import ParityRecord
from edgeqa.metrics import exact_match, rouge
from edgeqa.prompt import format_prompt
from edgeqa.records import QARecord, read_records, sample_data
from edgeqa.runtime import Answer, GenerationOptions, QAModel, until_eos

logger = logging.getLogger(__name__)

FP32_MIN_IDENTICAL = 0.99
QUANTIZED_MAX_ROUGE_L_DELTA = 0.01
#: A floor on how far a quantized artifact's answers may drift from PyTorch's, token by token, whatever the
#: references say: where they cannot tell two answers apart (long free text), ROUGE against them cannot either.
QUANTIZED_MIN_TOKEN_AGREEMENT = 0.5
#: Where the references are short answers, the artifact's exact match may fall this much below PyTorch's.
QUANTIZED_MAX_EXACT_MATCH_DROP = 0.01
SHORT_ANSWER_WORDS = 5


def _token_agreement(a: list[int], b: list[int]) -> tuple[int, int]:
    same = sum(x == y for x, y in zip(a, b, strict=False))  # answers may differ in length
    return same, max(len(a), len(b), 1)


def reference_answers(
    checkpoint: str | Path,
    prompts: list[str],
    max_input_tokens: int,
    batch_size: int,
    threads: int | None = None,
    tokenizer: Any = None,
    **generate_options: Any,
) -> tuple[list[list[int]], float]:
    """Answers of the PyTorch checkpoint with transformers' `generate` (greedy unless options say
    otherwise): token ids, end-of-answer included, and the mean ms per question, on `threads` CPU
    threads where given (as the artifact's side runs, so that the two times compare). `tokenizer` is the
    checkpoint's, loaded here unless given."""
    import torch
    from transformers import GenerationConfig

    tokenizer, model = load_tokenizer(checkpoint) if tokenizer is None else tokenizer, load_model(checkpoint)
    eos = model.config.eos_token_id
    # only what is asked for: the checkpoint's generation_config.json (n-gram blocking, penalties, ...) is
    # not the artifact's, whose runtime applies its own options only
    model.generation_config = GenerationConfig(
        decoder_start_token_id=model.config.decoder_start_token_id,
        eos_token_id=eos,
        pad_token_id=model.config.pad_token_id,
    )
    answers: list[list[int]] = []
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            for first in range(0, len(prompts), batch_size):
                batch = encode_prompts(tokenizer, prompts[first : first + batch_size], max_input_tokens)
                output = model.generate(**batch, **({"num_beams": 1, "do_sample": False} | generate_options))
                answers += [until_eos(row, eos) for row in output[:, 1:].tolist()]
    finally:
        torch.set_num_threads(default_threads)
    milliseconds = (time.perf_counter() - started) * 1000 / max(len(prompts), 1)
    return answers, milliseconds


def check_tokenizer(tokenizer: Any, model: QAModel, prompts: list[str], records: list[QARecord]) -> None:
    """Fail unless the artifact's tokenizer.json gives the checkpoint tokenizer's ids on every prompt."""
    expected = tokenizer(prompts, truncation=True, max_length=model.manifest.max_input_tokens)["input_ids"]
    try:
        actual = model.tokenizer.encode([r.question for r in records], [r.context for r in records])
    except InputError as e:  # a passage over the artifact's input limit: name the record
        number = next(n for n, r in enumerate(records, 1) if not _fits(model, r))
        raise ConfigError(
            f"parity question {number} ({records[number - 1].question[:40]!r}): {e}. Give parity data whose "
            "passages fit the artifact's input limit"
        ) from None
    differ = sum(a != b for a, b in zip(actual, expected, strict=True))
    if differ:
        raise ExportError(
            f"tokenizer.json gives other ids than the checkpoint's tokenizer on {differ} of {len(records)} "
            "prompts; save the checkpoint with a fast tokenizer (tokenizer.json) and export again"
        )


def _fits(model: QAModel, record: QARecord) -> bool:
    try:
        model.tokenizer.encode([record.question], [record.context])
    except InputError:
        return False
    return True


class ParityCheck:
    """The gate: the checkpoint's answers (computed once) against any number of artifacts'.

    Both sides decode with the artifact's generation defaults (its manifest's beams and answer length),
    the length capped at `max_new_tokens`; the checkpoint's answers are read with its own tokenizer.

    Args:
        checkpoint: The PyTorch checkpoint.
        records: Held-out questions with reference answers.
        max_new_tokens: Most answer tokens compared.
        batch_size: Questions per batch on both sides.
        threads: Runtime threads.
    """

    def __init__(
        self,
        checkpoint: str,
        records: list[QARecord],
        max_new_tokens: int = PARITY_MAX_NEW_TOKENS,
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
        self.expected_texts: list[str] = []
        self.max_input_tokens = 0  # the artifact's, as the outlier search reads the prompts
        self.options = GenerationOptions()
        self._reference_ms = 0.0

    def run(self, artifact: Path, indices: list[int] | None = None, split: str = "all") -> ParityRecord:
        """Answer the questions at `indices` (default all) with the artifact; compare; apply the gate."""
        model = QAModel.load(artifact, threads=self.threads, verify=False)
        questions = [r.question for r in self.records]
        contexts = [r.context for r in self.records]
        if not self.expected:
            self._answer_with_pytorch(model)
        picked = list(range(len(questions))) if indices is None else indices
        logger.debug("parity: the artifact answers %d questions", len(picked))
        started = time.perf_counter()
        answers = model.answer_batch(
            [questions[i] for i in picked],
            self.options,
            batch_size=self.batch_size,
            contexts=[contexts[i] for i in picked],
        )
        artifact_ms = (time.perf_counter() - started) * 1000 / max(len(picked), 1)
        return _compare(
            model,
            answers,
            [self.expected[i] for i in picked],
            [self.expected_texts[i] for i in picked],
            [self.records[i].answer for i in picked],
            (self._reference_ms, artifact_ms),
            self.options.max_new_tokens,
            split,
        )

    def _answer_with_pytorch(self, model: QAModel) -> None:
        """The checkpoint's answers to every question, once, as the artifact (`model`) is set to decode."""
        manifest = model.manifest
        self.max_input_tokens = manifest.max_input_tokens
        # plain search with the artifact's beams, as `QAModel` answers by default
        self.options = GenerationOptions(
            max_new_tokens=min(self.max_new_tokens, model.defaults.max_new_tokens), num_beams=model.defaults.num_beams
        )
        self.prompts = [
            format_prompt(r.question, manifest.prompt_template, r.context, manifest.context_template)
            for r in self.records
        ]
        tokenizer = load_tokenizer(self.checkpoint)
        check_tokenizer(tokenizer, model, self.prompts, self.records)
        logger.debug("parity: PyTorch answers %d questions", len(self.records))
        self.expected, self._reference_ms = reference_answers(
            self.checkpoint,
            self.prompts,
            self.max_input_tokens,
            self.batch_size,
            self.threads,
            tokenizer,
            max_new_tokens=self.options.max_new_tokens,
            num_beams=self.options.num_beams,
        )
        self.expected_texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in self.expected]


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
    max_new_tokens: int = PARITY_MAX_NEW_TOKENS,
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
    token_agreement: float = 1.0,
) -> tuple[bool, str]:
    """(passed, the rule): float graphs must give identical answers; quantized ones the same ROUGE-L
    within a point, at least half their answer tokens PyTorch's and, where the references are short
    answers, no more than a point less exact match."""
    if not references:  # nothing compared, nothing shown
        return False, "no questions answered"
    if weight_type is None:
        return identical >= FP32_MIN_IDENTICAL, f"fp32: identical answers >= {FP32_MIN_IDENTICAL * 100:.0f}%"
    gate = (
        f"{weight_type}: |ROUGE-L difference| <= {QUANTIZED_MAX_ROUGE_L_DELTA * 100:.1f} points, "
        f"token agreement >= {QUANTIZED_MIN_TOKEN_AGREEMENT * 100:.0f}%"
    )
    passed = within(abs(rouge_l_delta), QUANTIZED_MAX_ROUGE_L_DELTA)
    passed = passed and token_agreement >= QUANTIZED_MIN_TOKEN_AGREEMENT
    if short_answers(references):
        gate += f", exact match at most {QUANTIZED_MAX_EXACT_MATCH_DROP * 100:.1f} point below PyTorch's"
        passed = passed and within(reference_em - artifact_em, QUANTIZED_MAX_EXACT_MATCH_DROP)
    return passed, gate


def _compare(
    model: QAModel,
    answers: list[Answer],
    expected: list[list[int]],
    reference_texts: list[str],
    references: list[str],
    milliseconds: tuple[float, float],
    max_new_tokens: int,
    split: str,
) -> ParityRecord:
    """The two sides' answers (`expected`: PyTorch's ids, read as `reference_texts` by the checkpoint's own
    tokenizer) against each other and against the `references`, with the gate's verdict."""
    artifact_texts = [a.text for a in answers]
    reference_rouge = rouge(reference_texts, references)
    artifact_rouge = rouge(artifact_texts, references)
    reference_em = exact_match(reference_texts, references)
    artifact_em = exact_match(artifact_texts, references)
    # the same tokens, read as the same text (the artifact's tokenizer decodes them as the checkpoint's does)
    pairs = zip(answers, expected, reference_texts, strict=True)
    identical = sum(a.tokens == e and a.text == text for a, e, text in pairs) / max(len(answers), 1)
    same = total = 0
    for a, e in zip(answers, expected, strict=True):
        s, t = _token_agreement(a.tokens, e)
        same, total = same + s, total + t
    agreement = same / max(total, 1)
    delta = artifact_rouge["rougeL"] - reference_rouge["rougeL"]
    quantization = model.manifest.quantization
    weight_type = quantization.weight_type if quantization else None
    passed, gate = apply_gate(weight_type, delta, identical, reference_em, artifact_em, references, agreement)
    return ParityRecord(
        samples=len(answers),
        quantized=weight_type is not None,
        reference_rouge=reference_rouge,
        artifact_rouge=artifact_rouge,
        rouge_l_delta=delta,
        identical_answers=identical,
        token_agreement=agreement,
        reference_exact_match=reference_em,
        artifact_exact_match=artifact_em,
        reference_ms=milliseconds[0],
        artifact_ms=milliseconds[1],
        passed=passed,
        gate=gate,
        max_new_tokens=max_new_tokens,
        split=split,
    )
