"""``bash scripts/dev.sh demo`` writes where the user asks (issue 24): ``--out`` relative to the directory the
script was run from, default ``./demo_output`` there (printed), never the repository root.

The script runs for real in a copy of the repository's layout whose ``.venv`` is already complete, with a stub
Python that records how the demo is started (so no packages are installed and no demo is computed)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STUB = r"""#!/usr/bin/env bash
case "$*" in
  *"sys.version_info[0]"*) echo py311 ;;
  *"import torch, ebsd"*) exit 0 ;;
  "-m ebsd demo"*) { echo "CWD=$(pwd)"; printf 'ARG=%s\n' "$@"; } > "$STUB_LOG" ;;
  *) echo "stub python: unexpected call: $*" >&2; exit 99 ;;
esac
"""


@pytest.fixture
def fake_repo(tmp_path):
    if shutil.which("bash") is None or shutil.which("sha256sum") is None:
        pytest.skip("needs bash and sha256sum")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "dev.sh", repo / "scripts" / "dev.sh")
    pyproject = b"[project]\nname = 'x'\n"
    (repo / "pyproject.toml").write_bytes(pyproject)
    bin_ = repo / ".venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "python").write_text(STUB)
    (bin_ / "python").chmod(0o755)
    stamp = hashlib.sha256(pyproject + b"extras= mode=locked python=py311\n").hexdigest()[:16]
    (repo / ".venv" / f".ebsdtk-{stamp}").touch()
    work = tmp_path / "work"
    work.mkdir()
    return repo, work


def _run(repo, work, *args):
    env = dict(os.environ, EBSDTK_PYTHON=str(repo / ".venv" / "bin" / "python"), STUB_LOG=str(work / "stub.log"))
    out = subprocess.run(["bash", str(repo / "scripts" / "dev.sh"), "demo", *args], cwd=work, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    log = (work / "stub.log").read_text().splitlines()
    return out.stdout, log


def test_default_output_under_the_current_directory(fake_repo):
    repo, work = fake_repo
    before = sorted(p.name for p in repo.iterdir())
    stdout, log = _run(repo, work)
    assert f"CWD={work}" in log
    assert log[log.index("ARG=--out") + 1] == f"ARG={work}/demo_output"
    assert f"demo output goes to {work}/demo_output" in stdout
    assert sorted(p.name for p in repo.iterdir()) == before  # nothing new in the repository root


@pytest.mark.parametrize("form", ["split", "equals"])
def test_out_relative_to_where_the_user_ran_it(fake_repo, form):
    repo, work = fake_repo
    args = ["--out", "results/run1", "--device", "cpu"] if form == "split" else ["--out=results/run1"]
    stdout, log = _run(repo, work, *args)
    assert f"CWD={work}" in log  # so the relative path resolves against the user's directory
    assert ("ARG=results/run1" in log) if form == "split" else ("ARG=--out=results/run1" in log)
    assert sum(a.startswith("ARG=--out") for a in log) == 1
    assert f"demo output goes to {work}/results/run1" in stdout
