"""Fine-tune FLAN-T5 for question answering with the Hugging Face Seq2SeqTrainer (needs `edgeqa[train]`)."""

from edgeqa.errors import MissingExtraError

try:
    from edgeqa.finetune.config import FinetuneConfig
    from edgeqa.finetune.train import FinetuneResult, finetune, metrics_table
except ModuleNotFoundError as e:
    raise MissingExtraError(
        f"fine-tuning needs {e.name}, which is not installed: pip install 'edgeqa[train]' "
        "(install torch==2.13.0 first for the CPU build)"
    ) from e

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "metrics_table"]
