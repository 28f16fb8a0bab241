"""Random-weight FLAN-T5-shaped checkpoints, for the demo, the benchmark and the tests.

No pretrained weights can be downloaded offline; these give real T5 graphs with FLAN-T5's
vocabulary and tokenizer, seeded so that every run builds the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

from edgeqa.finetune.portable import make_portable
from edgeqa.finetune.t5_heads import model_class
from edgeqa.records import BUNDLED_TOKENIZER

# Architecture fields of google/flan-t5-small and google/flan-t5-base (config.json).
FLAN_T5_SHAPES: dict[str, dict[str, int]] = {
    "small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
    "base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12),
    "large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16),
    "xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32),
}


def build_random_t5(folder: Path, seed: int = 0, **config: Any) -> Path:
    """Save a seeded, randomly initialised FLAN-T5-shaped model with the bundled FLAN-T5 tokenizer.

    Args:
        folder: Where to save (`from_pretrained` loads it).
        seed: torch seed for the weights.
        config: `T5Config` fields (sizes, `initializer_factor`, ...) over FLAN-T5's defaults.
    """
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=32128,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        relative_attention_num_buckets=32,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model_config = T5Config(**(fields | config))
    own_head = model_class(model_config)  # transformers 5.x: FLAN-T5's own lm_head
    model = (own_head or T5ForConditionalGeneration)(model_config)
    if own_head:  # initialised as 4.x initialises an untied lm_head
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, model_config.initializer_factor)
    model.save_pretrained(folder)
    T5TokenizerFast.from_pretrained(BUNDLED_TOKENIZER).save_pretrained(folder)
    make_portable(Path(folder))
    return Path(folder)
