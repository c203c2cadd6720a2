"""Every example of README.md runs as written, in order, from a scratch folder outside the repository (CPU).

The README's fenced ``python`` and ``bash`` blocks are extracted and run in document order in one temporary
folder: Python blocks with ``exec`` (``__name__ == "__main__"``), command lines of ``ebsdtk`` and ``llmeff`` through
their ``main`` functions in this process (``a; b`` runs both). What cannot run here is marked in the README with
an HTML comment just before the block:

* ``<!-- readme-test: skip (why) -->``: the whole block is skipped;
* ``<!-- readme-test: skip-lines "NAME" "NAME" ... (why) -->``: command lines containing any NAME are skipped.

Every other command must be ``ebsdtk`` or ``llmeff``: a new kind of command in the README fails here until it is
run or marked. ``LM`` (the model folder the llmeff command lines take) is a tiny random Llama with a tokenizer,
made here, since training one takes minutes.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARK = re.compile(r"<!--\s*readme-test:\s*(skip-lines|skip)\b(.*?)-->", re.S)


@dataclass
class Block:
    index: int
    lang: str
    line: int                    # 1-based line of the first code line in README.md
    code: str
    skip: str | None = None      # reason, when the whole block is skipped
    skip_names: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.index:02d}-{self.lang}-line{self.line}"


def readme_blocks(text: str) -> list[Block]:
    blocks, prev_end = [], 0
    for i, m in enumerate(_FENCE.finditer(text)):
        lang = m.group(1).lower()
        between = text[prev_end:m.start()]
        prev_end = m.end()
        if lang not in ("python", "bash", "sh", "shell"):
            continue
        b = Block(i, "python" if lang == "python" else "bash", text[:m.start(2)].count("\n") + 1, m.group(2))
        for kind, rest in _MARK.findall(between):
            if kind == "skip":
                b.skip = rest.strip() or "marked skip"
            else:
                b.skip_names += re.findall(r'"([^"]+)"', rest)
        blocks.append(b)
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def _commands(line: str) -> list[list[str]]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=";")
    lex.whitespace_split = True
    lex.commenters = "#"
    cmds, cur = [], []
    for tok in lex:
        if tok == ";":
            cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    cmds.append(cur)
    return [c for c in cmds if c]


def _run_cli(argv: list[str]) -> int:
    if argv[0] == "ebsdtk":
        from ebsd.cli import main
    elif argv[0] == "llmeff":
        from llmeff.cli import main
    else:
        raise AssertionError(f"README command {' '.join(argv)!r}: the README test runs only ebsdtk and llmeff "
                             "commands; run it here or mark it with <!-- readme-test: skip-lines ... -->")
    try:
        return int(main(argv[1:]) or 0)
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """An empty folder outside the repository, made the working directory for the module; holds ``LM``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _lm_folders import save_lm_folder

    d = tmp_path_factory.mktemp("readme")
    assert REPO not in d.resolve().parents
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))       # spawned workers import this checkout, wherever the cwd is
    if any("llmeff" in b.code for b in BLOCKS):
        pytest.importorskip("transformers")
        save_lm_folder(d / "LM")
    import torch

    old, threads = os.getcwd(), torch.get_num_threads()
    torch.set_num_threads(1)  # 2 intra-op threads on 2 busy CI cores ran these examples several times slower
    os.chdir(d)
    yield {"dir": d, "ns": {}}
    os.chdir(old)
    torch.set_num_threads(threads)


def test_readme_has_runnable_examples():
    langs = [b.lang for b in BLOCKS if b.skip is None]
    assert langs.count("python") >= 3 and langs.count("bash") >= 2
    for b in BLOCKS:  # every skip says why
        if b.skip is not None:
            assert re.search(r"\(.+\)", b.skip), f"README block at line {b.line}: say why it is skipped"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(scratch, block, capsys):
    if block.skip is not None:
        pytest.skip(f"README line {block.line}: {block.skip}")
    if block.lang == "python":
        ns = {"__name__": "__main__"}
        exec(compile(block.code, f"README.md:{block.line}", "exec"), ns)
        scratch["ns"][block.index] = ns
        if "err_learned" in ns:  # the unfolded-RPCA example must show learning paying off, as the README says
            assert ns["err_learned"] < ns["err_default"] / 100
            said = re.search(r"#\s*defaults ([0-9.e+-]+), learned ([0-9.e+-]+)", block.code)
            assert said, "the README states the two errors it measured"
            for got, claim in ((ns["err_default"], said.group(1)), (ns["err_learned"], said.group(2))):
                assert abs(math.log10(got) - math.log10(float(claim))) < 1.5, (got, claim)
        return
    ran = 0
    for k, line in enumerate(block.code.splitlines()):
        if any(name in line for name in block.skip_names):
            continue
        for argv in _commands(line):
            rc = _run_cli(argv)
            out = capsys.readouterr()
            assert rc == 0, f"README line {block.line + k}: {' '.join(argv)!r} exited {rc}\n{out.err[-3000:]}"
            ran += 1
    assert ran > 0, f"README block at line {block.line}: every line is skipped; mark the block skip instead"
