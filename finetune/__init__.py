"""Fine-tune FLAN-T5 for question answering with the Hugging Face Seq2SeqTrainer.

`FinetuneConfig` needs only the standard library; training itself needs `edgeqa[train]`,
imported on first use (PEP 562).
"""

from typing import TYPE_CHECKING, Any

from edgeqa.extras import import_extra
from edgeqa.finetune.config import FinetuneConfig

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from edgeqa.finetune.train import FinetuneResult, finetune, metrics_table

_LAZY = dict.fromkeys(("FinetuneResult", "finetune", "metrics_table"), "edgeqa.finetune.train")

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "metrics_table"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_extra(_LAZY[name], "train", "fine-tuning"), name)
