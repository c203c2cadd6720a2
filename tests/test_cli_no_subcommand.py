"""``ebsdtk`` / ``llmeff`` without a subcommand: help on stderr, exit status 2 (argparse's usage-error code)."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["ebsd.cli", "llmeff.cli"])
def test_main_without_subcommand_is_a_usage_error(module, capsys):
    import importlib

    main = importlib.import_module(module).main
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage:" in captured.err and "a subcommand is required" in captured.err


@pytest.mark.parametrize("module, prog", [("ebsd.cli", "ebsdtk"), ("llmeff.cli", "llmeff")])
def test_module_without_subcommand_exits_2(module, prog):
    r = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "usage:" in r.stderr and f"{prog}: error: a subcommand is required" in r.stderr
    # --help is still a success on stdout
    h = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert h.returncode == 0 and "usage:" in h.stdout
