"""The CPU runtime: answers questions from an artifact folder with onnxruntime, tokenizers and numpy.

No torch, no transformers: `import edgeqa.runtime` must stay light.
"""

from edgeqa.runtime.model import Answer, QAModel
from edgeqa.runtime.options import GenerationOptions

__all__ = ["Answer", "GenerationOptions", "QAModel"]
