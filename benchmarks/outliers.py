"""Test models with T5's activation outliers, planted without changing the float model.

Real (FLAN-)T5 checkpoints carry a few huge activation channels, the FFN output projection
`wo`'s input above all. `plant_outliers` gives a trained model such channels by function-
preserving rescalings: T5 has no biases and its gated FFN is linear in the `wi_1` branch, so

- scaling `wi_1` rows by s and the matching `wo` columns by 1/s plants outliers in `wo`'s input;
- scaling `layer_norm` weight entries by s and the matching `wi_0`/`wi_1` (or `q`/`k`/`v`)
  columns by 1/s plants them in the layer norm's output, which those projections read.

With powers of two every product is exact, so the float model's outputs are bit-identical
while int8 with one activation scale per row (or tensor) loses the other channels' resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STACKS = ("encoder", "decoder")
# The model outliers are planted into: the demo's shape trained for 500 steps (about a minute on
# 2 cores) on the capitals and continents of the bundled countries (the tests' facts fixture).
FACTS_RELATIONS = ("capital", "continent")
FACTS_STEPS = 500
FACTS_LR = 4e-3


@dataclass(frozen=True)
class OutlierPlan:
    """Where outliers go and how large they are.

    Attributes:
        scale: The factor (a power of two) planted channels are multiplied by; 1 plants nothing.
        channels: Channels planted per activation.
        stacks: "encoder", "decoder" or both.
        seed: Picks the channels.
    """

    scale: int
    channels: int = 2
    stacks: tuple[str, ...] = STACKS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scale < 1 or self.scale & (self.scale - 1):
            raise ValueError(f"scale must be a power of two (bit-exact float), got {self.scale}")
        unknown = set(self.stacks) - set(STACKS)
        if unknown:
            raise ValueError(f"stacks must be encoder and/or decoder, got {sorted(unknown)}")


def plant_outliers(model: object, plan: OutlierPlan) -> int:
    """Rescale a `T5ForConditionalGeneration` in place; returns the number of activations planted."""
    import torch

    if plan.scale == 1:
        return 0
    generator = torch.Generator().manual_seed(plan.seed)
    s = float(plan.scale)
    planted = 0
    with torch.no_grad():
        for stack in plan.stacks:
            for block in getattr(model, stack).block:
                attention, ff = block.layer[0], block.layer[-1]
                dense = ff.DenseReluDense
                if not hasattr(dense, "wi_1"):
                    raise ValueError("plant_outliers needs T5's gated feed-forward (FLAN-T5's gated-gelu)")
                # wo's input: wi_1 rows up, wo columns down.
                picked = torch.randperm(dense.wi_1.out_features, generator=generator)[: plan.channels]
                dense.wi_1.weight[picked, :] *= s
                dense.wo.weight[:, picked] /= s
                # wi_0/wi_1's input: the feed-forward layer norm's entries up, their columns down.
                picked = torch.randperm(ff.layer_norm.weight.numel(), generator=generator)[: plan.channels]
                ff.layer_norm.weight[picked] *= s
                dense.wi_0.weight[:, picked] /= s
                dense.wi_1.weight[:, picked] /= s
                # q/k/v's input: the self-attention layer norm.
                picked = torch.randperm(attention.layer_norm.weight.numel(), generator=generator)[: plan.channels]
                attention.layer_norm.weight[picked] *= s
                for projection in (attention.SelfAttention.q, attention.SelfAttention.k, attention.SelfAttention.v):
                    projection.weight[:, picked] /= s
                planted += 3
    return planted


def save_with_outliers(checkpoint: Path, output: Path, plan: OutlierPlan) -> Path:
    """Copy a checkpoint folder (tokenizer and training record too) with outliers planted."""
    import shutil

    from transformers import AutoModelForSeq2SeqLM

    shutil.copytree(checkpoint, output, dirs_exist_ok=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    plant_outliers(model, plan)
    model.save_pretrained(output)
    return output


def write_facts_data(folder: Path) -> Path:
    """train/validation/test JSONL of FACTS_RELATIONS (`edgeqa.facts`)."""
    from edgeqa.facts import load_facts, make_splits, write_splits

    # three phrasings a relation: the recipe granularity.md and outlier_search.md were measured with
    splits = make_splits(load_facts(FACTS_RELATIONS), train_phrasings=3)
    write_splits(folder, {name: splits[name] for name in ("train", "validation", "test")})
    return folder


def train_facts_model(output: Path, data: Path | None = None) -> Path:
    """Fine-tune a fresh demo-shaped model on the facts with `edgeqa.finetune`; returns the run folder
    (its checkpoint is `output/final`)."""
    from edgeqa.demo import DEMO_SHAPE
    from edgeqa.finetune import FinetuneConfig, finetune
    from edgeqa.finetune.models import build_random_t5

    output.parent.mkdir(parents=True, exist_ok=True)
    data = data or write_facts_data(output.parent / f"{output.name}-data")
    base = build_random_t5(output.parent / f"{output.name}-base", initializer_factor=0.5, **DEMO_SHAPE)
    finetune(
        FinetuneConfig(
            model=str(base),
            data=str(data),
            output_dir=output,
            epochs=1000,
            max_steps=FACTS_STEPS,
            learning_rate=FACTS_LR,
            batch_size=32,
            eval_batch_size=100,
            max_eval_samples=200,
            max_target_tokens=16,
            eval_max_new_tokens=16,
            save_total_limit=1,
            logging_steps=50,
            device="cpu",
        ),
        trainer_overrides=dict(eval_strategy="no", save_strategy="no", load_best_model_at_end=False),
    )
    return output
