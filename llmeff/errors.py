"""Errors raised by :mod:`llmeff`."""


class LLMEffError(Exception):
    """Base class of every error raised on purpose by :mod:`llmeff`."""


class UnsupportedModelError(LLMEffError, TypeError):
    """The model's architecture is not one this method knows how to hook; the message lists what is."""


class LLMEffValueError(LLMEffError, ValueError):
    """An argument is out of range (density, budget, rank...)."""


class LLMEffFileNotFoundError(LLMEffError, FileNotFoundError):
    """A model, tokenizer or saved-state folder is missing or incomplete (nothing is ever downloaded)."""


class LLMEffWorkerError(LLMEffError, RuntimeError):
    """A worker process of a multi-process command failed; the message carries the worker's own error."""


class MissingTokenIdsError(LLMEffError, ValueError):
    """A STEM feed-forward block (:mod:`llmeff.stem`) was called without the token ids it indexes its
    embedding table by (e.g. the model was called with ``inputs_embeds``, or the block directly)."""
