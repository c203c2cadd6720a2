"""Errors raised by :mod:`ebsd`. Each message names the file or field and says what to do."""


class EBSDError(Exception):
    """Base class of every error raised on purpose by :mod:`ebsd`."""


class EBSDFormatError(EBSDError, ValueError):
    """A file is truncated, garbled, or not in a format we read. The message names the file and field."""


class EBSDValueError(EBSDError, ValueError):
    """An argument or an array has the wrong shape, dtype, range or content."""


class EBSDFileExistsError(EBSDError, FileExistsError):
    """A writer was asked to replace an existing file without ``overwrite=True``."""


class EBSDDependencyError(EBSDError, ImportError):
    """An optional dependency (an extra) is missing; the message says which extra to install."""
