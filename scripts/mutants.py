"""A small mutation-testing runner: one AST mutation at a time in a scratch copy of the tree, the given tests run
against it, survivors listed.

    python scripts/mutants.py MODULE.py --tests tests/test_x.py [tests/test_y.py::test_z ...]
           [--max N] [--seed S] [--timeout-factor F] [--json PATH]

Operators: comparison (< <=, > >=, == !=, is / is not, in / not in), arithmetic (+ -, * /, // /, ** *, % //),
augmented assignment, and/or, dropped unary minus and not, integer constants n -> n + 1, float constants
x -> 2x (0.0 -> 1.0), True <-> False. Docstrings, string constants and module-level ``__all__`` are left alone.

A mutant is *killed* when the tests fail or time out (``timeout-factor`` x the clean run), *survives* when they
pass. The tree is copied once (tracked and untracked-but-not-ignored files, ``git ls-files``) to a temporary
folder; each mutant's tests run in a fork of a process that imported torch & co. once (``--no-fork``: a fresh
interpreter each time); the module is rewritten there per mutant with ``ast.unparse`` (so line numbers refer to the original
file) and restored afterwards. Exit status 0; the summary line and the JSON give the surviving share.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
            ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}
BOOL_SWAP = {ast.And: ast.Or, ast.Or: ast.And}


def _docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def sites(tree: ast.AST) -> list[tuple[int, str, str]]:
    """``(index, line, description)`` of every mutation site, in ``ast.walk`` order."""
    out = []
    skip = _docstring_ids(tree)
    for node in ast.walk(tree):
        for desc in _mutations(node, skip):
            out.append((len(out), getattr(node, "lineno", 0), desc))
    return out


def _mutations(node, skip) -> list[str]:
    m = []
    if isinstance(node, ast.Compare):
        for j, op in enumerate(node.ops):
            if type(op) in CMP_SWAP:
                m.append(f"cmp{j}:{type(op).__name__}->{CMP_SWAP[type(op)].__name__}")
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BIN_SWAP:
        m.append(f"op:{type(node.op).__name__}->{BIN_SWAP[type(node.op)].__name__}")
    elif isinstance(node, ast.BoolOp):
        m.append(f"bool:{type(node.op).__name__}->{BOOL_SWAP[type(node.op)].__name__}")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
        m.append(f"drop {type(node.op).__name__}")
    elif isinstance(node, ast.Constant) and id(node) not in skip:
        v = node.value
        if isinstance(v, bool):
            m.append(f"const {v}->{not v}")
        elif isinstance(v, int):
            m.append(f"const {v}->{v + 1}")
        elif isinstance(v, float):
            m.append(f"const {v!r}->{(2 * v if v else 1.0)!r}")
    return m


class _Apply(ast.NodeTransformer):
    def __init__(self, target: int, skip):
        self.target, self.k, self.skip = target, 0, skip

    def generic_visit(self, node):
        return super().generic_visit(node)

    def visit(self, node):
        for desc in _mutations(node, self.skip):
            if self.k == self.target:
                self._mutate(node, desc)
            self.k += 1
        return self.generic_visit(node)

    def _mutate(self, node, desc):
        if desc.startswith("cmp"):
            j = int(desc[3:desc.index(":")])
            node.ops[j] = CMP_SWAP[type(node.ops[j])]()
        elif desc.startswith("op:"):
            node.op = BIN_SWAP[type(node.op)]()
        elif desc.startswith("bool:"):
            node.op = BOOL_SWAP[type(node.op)]()
        elif desc.startswith("drop"):
            node.op = ast.UAdd() if isinstance(node.op, ast.USub) else _NotNot()
        elif desc.startswith("const"):
            v = node.value
            node.value = (not v) if isinstance(v, bool) else (v + 1 if isinstance(v, int) else (2 * v if v else 1.0))


class _NotNot(ast.UAdd):
    """Placeholder: 'not x' -> 'x' is done by replacing the UnaryOp in mutate_source."""


def mutate_source(src: str, index: int) -> str:
    tree = ast.parse(src)
    skip = _docstring_ids(tree)
    # ast.walk order (breadth first) defines the indices: map index -> node
    order = [(node, d) for node in ast.walk(tree) for d in _mutations(node, skip)]
    node, desc = order[index]
    if desc == "drop Not":
        node.op = ast.UAdd()                # +(x) keeps a value; for booleans 'not' dropped means x itself
        node.operand = ast.Call(func=ast.Name("bool", ast.Load()), args=[node.operand], keywords=[])
    else:
        ap = _Apply(-1, skip)
        ap._mutate(node, desc)
    return ast.unparse(ast.fix_missing_locations(tree))


def copy_tree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        s = ROOT / f
        if s.is_file():
            d = dst / f
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)


def run_tests(cwd: Path, tests: list[str], timeout: float, extra: list[str]) -> tuple[str, float]:
    t = time.perf_counter()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                            *extra, *tests], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
        res = "survived" if r.returncode == 0 else ("killed" if r.returncode == 1 else f"error{r.returncode}")
    except subprocess.TimeoutExpired:
        res = "timeout"
    return res, time.perf_counter() - t


PRELOAD = ("numpy", "scipy", "torch", "h5py", "pytest", "tqdm", "orix", "transformers", "diffusers", "tensorly",
           "numba", "skimage", "safetensors")


def preload() -> None:
    """Import the heavy third-party packages once in this process; forked children inherit them (our own packages
    are never imported here, so each child imports the mutated tree afresh)."""
    import importlib

    import torch

    if not torch.cuda.is_available():  # as tests/conftest.py does, before anything imports triton
        os.environ.setdefault("TRITON_INTERPRET", "1")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def run_forked(cwd: Path, tests: list[str], timeout: float, extra: list[str]) -> tuple[str, float]:
    """Like :func:`run_tests`, in a forked child of this (preloaded) process: saves the ~10-30 s of imports."""
    import signal

    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            os.chdir(cwd)
            sys.path.insert(0, str(cwd))
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            import pytest

            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *extra, *tests]))
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            res = "survived" if rc == 0 else ("killed" if rc == 1 else f"error{rc}")
            return res, time.perf_counter() - t
        if time.perf_counter() - t > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.perf_counter() - t
        time.sleep(0.05)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("module", help="path of the module to mutate, relative to the repository root")
    ap.add_argument("--tests", nargs="+", required=True, help="pytest paths / node ids (the relevant tests only)")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. \"-k 'not slow'\"")
    ap.add_argument("--max", type=int, default=0, help="at most this many mutants, sampled with --seed (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-factor", type=float, default=4.0)
    ap.add_argument("--lines", default="", help="only sites on these lines: 'a-b,c-d' (e.g. one function)")
    ap.add_argument("--json", default=None, help="write results here (default benchmarks/results/mutants_<name>.json)")
    ap.add_argument("--list", action="store_true", help="list the mutation sites and exit")
    ap.add_argument("--no-fork", action="store_true", help="a fresh interpreter per mutant (slower; no fork())")
    args = ap.parse_args(argv)
    import shlex

    extra = shlex.split(args.pytest_args)
    src = (ROOT / args.module).read_text()
    all_sites = sites(ast.parse(src))
    if args.lines:
        spans = [tuple(int(x) for x in part.split("-")) for part in args.lines.split(",")]
        all_sites = [s for s in all_sites if any(a <= s[1] <= b for a, b in spans)]
    chosen = all_sites
    if args.max and len(chosen) > args.max:
        chosen = sorted(random.Random(args.seed).sample(chosen, args.max))
    if args.list:
        for i, line, desc in chosen:
            print(f"{i:4d}  line {line:4d}  {desc}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        work = Path(tmp)
        copy_tree(work)
        target = work / args.module
        runner = run_tests
        if not args.no_fork and hasattr(os, "fork"):
            preload()
            runner = run_forked
        res, base_s = runner(work, args.tests, 900, extra)
        if res != "survived":
            print(f"the clean tree does not pass {args.tests} ({res}); fix that first", file=sys.stderr)
            return 2
        print(f"clean run {base_s:.1f} s; {len(chosen)} of {len(all_sites)} sites", flush=True)
        rows = []
        try:
            for k, (i, line, desc) in enumerate(chosen):
                try:
                    target.write_text(mutate_source(src, i))
                except Exception as exc:  # an unparsable mutant counts as killed by the compiler
                    rows.append({"site": i, "line": line, "mutation": desc, "result": f"invalid {exc!r}"})
                    continue
                r, s = runner(work, args.tests, max(30.0, args.timeout_factor * base_s), extra)
                rows.append({"site": i, "line": line, "mutation": desc, "result": r, "s": round(s, 1)})
                mark = "SURVIVED" if r == "survived" else r
                print(f"[{k + 1}/{len(chosen)}] line {line:4d} {desc:28s} {mark}", flush=True)
        finally:
            target.write_text(src)
    surv = [r for r in rows if r["result"] == "survived"]
    n = len(rows)
    share = len(surv) / n if n else 0.0
    print(f"{args.module}: {n} mutants, {n - len(surv)} killed, {len(surv)} survived ({share:.1%})")
    for r in surv:
        print(f"  survivor: line {r['line']} {r['mutation']}")
    out = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"mutants_{Path(args.module).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"module": args.module, "tests": args.tests, "pytest_args": args.pytest_args,
                               "sites_total": len(all_sites), "mutants": n, "survived": len(surv),
                               "survived_share": share, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
