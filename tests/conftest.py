"""Shared test configuration.

* Without CUDA, Triton kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` is set here,
  before anything imports :mod:`tensorkernels`, so the interpreter tests exercise the real kernel code.
* ``gpu`` tests skip cleanly without CUDA; ``napari`` tests skip without a display.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Load Triton's native module before any test loads Qt: importing it after PyQt6 (napari tests) segfaults
# in triton/knobs.py (seen with triton 3.9 + PyQt6 6.x; not with PyQt5).
try:  # pragma: no cover - depends on the environment
    import triton  # noqa: F401
    import triton.runtime  # noqa: F401
except Exception:
    pass

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_display = bool(os.environ.get("DISPLAY"))
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False); "
                                                    "GPU tests never run in CPU-only CI"))
        if "napari" in item.keywords and not has_display:
            item.add_marker(pytest.mark.skip(reason="needs a display (run under xvfb-run)"))


def triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real vendor files, never copied into the repository); tests using it skip when it is absent.

    CI's clean clone has no sibling ``shared/`` folder, so these reader tests run only on machines that hold the
    files (the lead's workstation); the skip reason says so, so a CI log does not read like a pass."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real vendor files not available: {SHARED_DATA} (a sibling of the repository) is absent; "
                    "these reader tests run only where ../shared/data exists, never in CI's clean clone")
    return SHARED_DATA
