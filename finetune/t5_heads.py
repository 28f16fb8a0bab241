"""FLAN-T5 under transformers 5.x arranged as 4.x arranges it: its own lm_head, one embedding module.

transformers 5.x ties T5's lm_head to the embedding (`shared`) in every config and reads FLAN-T5's
unscaled outputs from `scale_decoder_outputs` instead. A plain load keeps an lm_head that differs
from the embedding, but only where it can compare the two: loaded sharded (DeepSpeed ZeRO-3) or on
the meta device (FSDP 2's memory-saving load), and at any later `tie_weights()`, it ties them, and
FLAN-T5's lm_head is lost. `model_class` gives the class whose tie mapping leaves the lm_head out.
"""

from __future__ import annotations

import functools
from typing import Any

LM_HEAD = "lm_head.weight"


def model_class(model_config: Any) -> type | None:
    """The class to load or build a T5 with an lm_head of its own (untied, unscaled: FLAN-T5) under
    transformers 5.x: transformers' own class, its tie mapping without the lm_head. None where
    transformers' class already does (4.x, where `tie_word_embeddings: false` says it all) or the
    model is tied."""
    if getattr(model_config, "scale_decoder_outputs", None) is not False:
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING

    base = MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING.get(type(model_config), None)
    mapping = getattr(base, "_tied_weights_keys", None)
    if base is None or not isinstance(mapping, dict) or LM_HEAD not in mapping:
        return None
    return _own_head(base)


@functools.cache
def _own_head(base: type) -> type:
    # Same name and module: `save_pretrained` records the name as the checkpoint's architecture.
    tied: dict[str, str] = getattr(base, "_tied_weights_keys", {})
    mapping = {target: source for target, source in tied.items() if target != LM_HEAD}
    return type(base.__name__, (base,), {"__module__": base.__module__, "_tied_weights_keys": mapping})


def one_embedding_module(model: Any) -> None:
    """Make the encoder's and decoder's embedding the `shared` module itself, as in transformers 4.x.

    5.x gives each its own module holding the shared weight; FSDP 2 shards `shared` as a unit of its
    own (when the lm_head is untied) and then refuses the weight seen again in the root's modules.
    """
    shared = model.get_input_embeddings()
    stacks = [getattr(model, name, None) for name in ("encoder", "decoder")]
    if all(stack is None or stack.embed_tokens is shared for stack in stacks):
        return
    if any(stack is not None and stack.embed_tokens.weight is not shared.weight for stack in stacks):
        return  # not tied: leave the model as loaded
    model.set_input_embeddings(shared)
