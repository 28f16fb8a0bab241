"""Fine-tune FLAN-T5 for question answering with the Hugging Face Seq2SeqTrainer (needs `edgeqa[train]`)."""

from edgeqa.finetune.config import FinetuneConfig
from edgeqa.finetune.train import FinetuneResult, finetune, metrics_table

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "metrics_table"]
