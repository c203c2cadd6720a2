"""Crash-safe writes: write to a temporary sibling, then :func:`os.replace` it onto the target.

A crash (or Ctrl-C) during a write leaves the old file (or nothing) in place, never a half-written file
under the final name. Existing targets are only replaced with ``overwrite=True``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import EBSDFileExistsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public(tmp: Path, folder: bool = False) -> None:
    """Give a temporary file/folder the permissions a plain ``open()``/``mkdir()`` would have
    (mkstemp/mkdtemp create them private, 0600/0700)."""
    os.chmod(tmp, (0o777 if folder else 0o666) & ~_umask())


def _replaceable_dir(path: Path) -> bool:
    """True for a folder this toolkit wrote (an ``.ang`` folder with ``ebsdtk.json``, or only ``.ang``
    files): ``overwrite=True`` may replace it. Any other folder is never deleted."""
    entries = list(path.iterdir())
    return (path / "ebsdtk.json").is_file() or (bool(entries) and all(
        e.is_file() and e.suffix.lower() in (".ang", ".json") for e in entries)) or not entries


def check_overwrite(path, overwrite: bool) -> Path:
    """Raise :class:`EBSDFileExistsError` if ``path`` exists and ``overwrite`` is False."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise EBSDFileExistsError(
            f"{path} already exists; pass overwrite=True to replace it (or choose another name)"
        )
    return path


@contextlib.contextmanager
def atomic_file(path, overwrite: bool = False) -> Iterator[Path]:
    """``with atomic_file(target) as tmp:`` write to ``tmp``; on success ``tmp`` replaces ``target``."""
    path = check_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            if not overwrite:  # raced into existence
                raise EBSDFileExistsError(f"{path} already exists; pass overwrite=True to replace it")
            if not _replaceable_dir(path):
                raise EBSDFileExistsError(
                    f"{path} is a folder with other content; refusing to replace it with a file even with "
                    "overwrite=True: choose another name")
            shutil.rmtree(path)
        _public(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_file` for a folder: fill the temporary folder, then it is renamed into place
    (an existing target, allowed by ``overwrite=True``, is moved aside first and removed afterwards)."""
    path = check_overwrite(path, overwrite)
    if path.is_dir() and not path.is_symlink() and not _replaceable_dir(path):
        raise EBSDFileExistsError(
            f"{path} is a folder with content this toolkit did not write; refusing to replace it even with "
            "overwrite=True (it would be deleted): choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _public(tmp, folder=True)
        for f in tmp.rglob("*"):
            _public(f, folder=f.is_dir())
        old = None
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise EBSDFileExistsError(f"{path} already exists; pass overwrite=True to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
