"""Teacher-forced calibration on the PyTorch model: the questions of the parity gate's tuning part,
answered with the checkpoint's own (reference) answers, so that every activation int8 will see at
run time (encoder, every decoder step, the output projection) is seen here once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from edgeqa.export.loading import encode_prompts

CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class TeacherForced:
    """Tokenized prompts and reference answers, in batches.

    Attributes:
        batches: Keyword arguments of a T5 forward pass each (input_ids, attention_mask,
            decoder_input_ids, decoder_attention_mask).
        answer_masks: Per batch, which decoder positions carry an answer token (float, batch x length).
    """

    batches: list[dict[str, torch.Tensor]]
    answer_masks: list[torch.Tensor]

    def forward(self, model: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, answer mask) of each batch."""
        with torch.inference_mode():
            for batch, mask in zip(self.batches, self.answer_masks, strict=True):
                yield model(**batch).logits.float(), mask


def teacher_forced(
    tokenizer: Any,
    prompts: list[str],
    answers: list[list[int]],
    max_input_tokens: int,
    decoder_start: int,
    pad: int,
    batch_size: int = CALIBRATION_BATCH,
) -> TeacherForced:
    """Batches of prompts with their answers (token ids, end-of-answer included) as decoder inputs."""
    batches, masks = [], []
    for first in range(0, len(prompts), batch_size):
        encoded = encode_prompts(tokenizer, prompts[first : first + batch_size], max_input_tokens)
        rows = answers[first : first + batch_size]
        length = max(len(row) for row in rows)
        decoder = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length))
        for i, row in enumerate(rows):
            shifted = [decoder_start, *row[:-1]]
            decoder[i, : len(shifted)] = torch.tensor(shifted)
            mask[i, : len(row)] = 1.0
        batches.append(
            dict(
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                decoder_input_ids=decoder,
                decoder_attention_mask=mask.long(),
            )
        )
        masks.append(mask)
    return TeacherForced(batches, masks)


def input_ranges(model: torch.nn.Module, data: TeacherForced) -> dict[str, torch.Tensor]:
    """The largest |value| of each input channel of every `Linear`, over the calibration data."""
    ranges: dict[str, torch.Tensor] = {}
    hooks = []

    def record(name: str):
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            peak = inputs[0].detach().abs().flatten(0, -2).amax(dim=0).float()
            ranges[name] = torch.maximum(ranges[name], peak) if name in ranges else peak

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_pre_hook(record(name)))
    try:
        for _ in data.forward(model):
            pass
    finally:
        for handle in hooks:
            handle.remove()
    return ranges
