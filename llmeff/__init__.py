"""LLM inference efficiency on unmodified Hugging Face ``transformers`` models.

Submodules (imported on use; ``transformers`` is needed only by them, never by ``import llmeff``):
``llmeff.griffin`` (FF expert selection), ``llmeff.kvcache`` (cache compression),
``llmeff.tp`` (low-bit tensor-parallel communication), ``llmeff.caprese`` (low-rank distillation).
``llmeff.bridge`` (interdependent parallel generations: Bridge blocks, GRPO training).
"""
from .errors import (LLMEffError, LLMEffFileNotFoundError, LLMEffValueError, LLMEffWorkerError,
                     UnsupportedModelError)

__version__ = "0.1.0"
__all__ = ["LLMEffError", "LLMEffFileNotFoundError", "LLMEffValueError", "LLMEffWorkerError", "UnsupportedModelError",
           "__version__"]

# llmeff.stem (token-indexed embedding modules in place of the FF up projection) raises this one
from .errors import MissingTokenIdsError  # noqa: E402

__all__ += ["MissingTokenIdsError"]
