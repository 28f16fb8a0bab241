"""One model under transformers 4.57 and 5.x: the loaded model's tied weights, the saved files.

Training may run on the newest transformers while export runs on Optimum's (4.57). Under 5.x the
loaded model is arranged as 4.57 arranges it (an own lm_head stays its own, one embedding module),
and what `finetune` saves is rewritten where 5.x writes it in a form 4.57 reads otherwise or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeqa.errors import ModelError
from edgeqa.tied_weights import explicit_tie_setting, tie_problem

TOKENIZER_CONFIG = "tokenizer_config.json"
LM_HEAD = "lm_head.weight"


def keep_own_lm_head(model: Any) -> None:
    """Keep a FLAN-T5's own lm_head out of the weights transformers 5.x ties to the embedding.

    5.x ties T5's lm_head to `shared` in every config (the unscaled outputs of FLAN-T5 are read from
    `scale_decoder_outputs`). Loading leaves an lm_head that differs from the embedding untied, but
    any later `tie_weights()` (accelerate calls one when FSDP 2 shards the model) ties it again from
    the mapping, and FSDP 2 then loses `lm_head.weight`. Dropped from this model's mapping, the
    lm_head stays its own while the encoder's and decoder's embeddings stay tied to `shared`.
    Nothing to do under 4.x, where `tie_word_embeddings: false` says it all.
    """
    mapping = getattr(model, "_tied_weights_keys", None)
    unscaled = getattr(model.config, "scale_decoder_outputs", None) is False
    if not (unscaled and isinstance(mapping, dict) and LM_HEAD in mapping):
        return
    model._tied_weights_keys = {target: source for target, source in mapping.items() if target != LM_HEAD}
    getattr(model, "all_tied_weights_keys", {}).pop(LM_HEAD, None)


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


def make_portable(folder: Path) -> None:
    """Make a checkpoint folder written by `save_pretrained` readable alike by transformers 4.57 and 5.x.

    - config.json: the tie setting that matches the weights (5.x saves a FLAN-T5 as tied over its own
      lm_head, which 4.57 would replace by the embedding), and `use_cache` on (the Trainer saves it off).
    - tokenizer_config.json: 5.x writes the extra ids as an `extra_special_tokens` list, which 4.57
      reads as a dict and fails on; both read them as `additional_special_tokens`.

    Raises:
        ModelError: the weights and the tie settings still contradict each other.
    """
    explicit_tie_setting(folder)
    problem = tie_problem(folder)
    if problem:
        raise ModelError(f"the fine-tuned model cannot be saved as one model for every transformers version: {problem}")
    _update_json(folder / "config.json", lambda config: config | {"use_cache": True})
    if (folder / TOKENIZER_CONFIG).is_file():
        _update_json(folder / TOKENIZER_CONFIG, _special_tokens_as_list)


def _special_tokens_as_list(config: dict[str, Any]) -> dict[str, Any]:
    extra = config.get("extra_special_tokens")
    if not isinstance(extra, list):
        return config
    config = {key: value for key, value in config.items() if key != "extra_special_tokens"}
    config.setdefault("additional_special_tokens", extra)
    return config


def _update_json(path: Path, change: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    updated = change(data)
    if updated == data:
        return
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(updated, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
