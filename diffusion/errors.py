"""Errors raised by :mod:`diffusion`."""


class DiffusionError(Exception):
    """Base class of every error raised on purpose by :mod:`diffusion`."""


class DiffusionInputError(DiffusionError, ValueError):
    """An input image, stack or argument has the wrong shape, range or dtype."""


class CheckpointError(DiffusionError, FileNotFoundError):
    """A checkpoint is missing or does not match its config."""
