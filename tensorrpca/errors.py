"""Errors raised by :mod:`tensorrpca`."""


class RPCAError(Exception):
    """Base class of every error raised on purpose by :mod:`tensorrpca`."""


class RPCAInputError(RPCAError, ValueError):
    """The input tensor or an argument is invalid (order, ranks, dtype, NaN/inf, ranges)."""


class RPCAConvergenceWarning(UserWarning):
    """The iteration stopped at ``max_iter`` before reaching ``tol``, diverged, or stopped on an answer that the
    checks made without the truth call likely wrong (e.g. a sparse part holding most entries)."""


class RPCAFileExistsError(RPCAError, FileExistsError):
    """A save was asked to replace an existing file without ``overwrite=True`` (also a ``FileExistsError``)."""
