"""A small mutation-testing runner: one AST mutation at a time in a scratch copy of the tree, the given tests run
against it, survivors listed.

    python scripts/mutants.py MODULE.py --tests tests/test_x.py [tests/test_y.py::test_z ...]
           [--max N] [--seed S] [--timeout-factor F] [--json PATH]

Operators: comparison (< <=, > >=, == !=, is / is not, in / not in), arithmetic (+ -, * /, // /, ** *, % //),
augmented assignment, and/or, dropped unary minus and not, integer constants n -> n + 1, float constants
x -> 2x (0.0 -> 1.0), True <-> False. Docstrings, string constants and module-level ``__all__`` are left alone.

A mutant is *killed* when the tests fail or time out (``timeout-factor`` x the clean run), *survives* when they
pass. By default the clean run is profiled to learn which test calls which function of the module; a mutant then
runs only the tests that call the function holding it (all tests for module- or class-level lines and for
functions also called at import or in a fixture's setup; none, and "survived" without running, for a function no
test calls). With the default killer-first ordering, the tests that killed earlier mutants run first (most recent killer
first, the rest in collection order), so that with ``-x`` a killed mutant costs about one test; the test that
killed each mutant is recorded, and at the end the clean tree is run once more in the final order to show that
the reordering alone fails nothing. The JSON is rewritten after every mutant (``"complete": false`` until the
run ends), so a run cut short still records exactly which sites ran. The tree is copied once (tracked and untracked-but-not-ignored files, ``git ls-files``) to a temporary
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

import pytest

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


def run_tests(cwd: Path, tests: list[str], timeout: float, extra: list[str],
              first: list[str] | None = None, callmap_target: Path | None = None) -> tuple[str, float, str]:
    t = time.perf_counter()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                            *extra, *tests], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
        res = "survived" if r.returncode == 0 else ("killed" if r.returncode == 1 else f"error{r.returncode}")
    except subprocess.TimeoutExpired:
        res = "timeout"
    return res, time.perf_counter() - t, ""


PRELOAD = ("numpy", "scipy", "torch", "triton", "triton.runtime",  # triton before Qt (see tests/conftest.py)
           "h5py", "pytest", "tqdm", "orix", "transformers", "diffusers", "tensorly", "numba", "skimage", "safetensors",
           "dask", "dask.array", "sympy", "pint", "hypothesis", "hypothesis.strategies", "napari", "npe2", "vispy",
           "magicgui", "matplotlib", "matplotlib.pyplot",
           # pytest's entry-point plugins (loaded by every pytest.main; napari's pulls in much of napari and Qt)
           "pytestqt.plugin", "napari_plugin_engine._testsupport", "napari.utils._testsupport", "npe2._pytest_plugin",
           "pytest_timeout", "_hypothesis_pytestplugin", "anyio.pytest_plugin", "platformdirs.pytest_plugin")


LEAN = ("-p", "no:napari", "-p", "no:npe2", "-p", "no:napari-plugin-engine", "-p", "no:pytest-qt")


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


class _OrderPlugin:
    """pytest plugin: run the node ids in ``first`` before the others (stable), write the first failing node id to
    ``out``."""

    def __init__(self, first: list[str], out: str):
        self.first, self.out, self.seen = first, out, False

    def pytest_collection_modifyitems(self, session, config, items):
        rank = {nid: i for i, nid in enumerate(self.first)}
        items.sort(key=lambda it: rank.get(it.nodeid, len(rank)))

    def pytest_runtest_logreport(self, report):
        if report.failed and not self.seen:
            self.seen = True
            with open(self.out, "w") as f:
                f.write(report.nodeid)


class _CallMap:
    """pytest plugin: which test calls which function of the target file (``sys.setprofile``, call events only;
    calls made outside any test, e.g. at import, or in a fixture's setup, whose value later tests may share, are
    recorded under ``""``). Written to ``out`` as JSON ``{co_firstlineno: [node ids]}``."""

    def __init__(self, target: Path, out: str):
        self.targets = {str(target), os.path.realpath(target)}
        self.out, self.cur, self.calls = out, "", {}

    def _prof(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename in self.targets:
            self.calls.setdefault(frame.f_code.co_firstlineno, set()).add(self.cur)

    def pytest_configure(self, config):
        import threading

        sys.setprofile(self._prof)
        threading.setprofile(self._prof)

    def pytest_runtest_logstart(self, nodeid, location):
        self.cur = nodeid

    def pytest_runtest_logfinish(self, nodeid, location):
        self.cur = ""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):  # runs first; the fixtures are set up after it
        self.cur = ""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item):
        self.cur = item.nodeid

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item, nextitem):
        self.cur = item.nodeid

    def pytest_unconfigure(self, config):
        sys.setprofile(None)
        with open(self.out, "w") as f:
            json.dump({str(k): sorted(v) for k, v in self.calls.items()}, f)


class _Threads:
    """pytest plugin: one torch thread (set after tests/conftest.py's own choice): on 2 shared cores a second
    OpenMP thread mostly waits at barriers."""

    def pytest_sessionstart(self, session):
        try:
            import torch

            torch.set_num_threads(1)
        except Exception:
            pass


def functions(tree: ast.AST) -> list[tuple[int, int, int]]:
    """``(co_firstlineno, first line, last line)`` of every function: ``co_firstlineno`` is its first decorator's
    line (else the ``def`` line); the span runs from the ``def`` line (so default values belong to the function)
    to its end."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            key = min([d.lineno for d in node.decorator_list] + [node.lineno])
            out.append((key, node.lineno, node.end_lineno))
    return out


def tests_for_line(line: int, funcs, callmap: dict[int, list[str]]) -> list[str] | None:
    """The node ids that call the innermost function containing ``line``; ``None``: all tests (module or class
    level, or the function also ran outside any test, e.g. at import); ``[]``: no test calls it."""
    inner = [f for f in funcs if f[1] <= line <= f[2]]
    if not inner:
        return None
    key = max(inner, key=lambda f: f[1])[0]
    ids = callmap.get(key, [])
    if "" in ids:
        return None
    return list(ids)


def run_forked(cwd: Path, tests: list[str], timeout: float, extra: list[str],
               first: list[str] | None = None, callmap_target: Path | None = None) -> tuple[str, float, str]:
    """Like :func:`run_tests`, in a forked child of this (preloaded) process: saves the ~10-30 s of imports.
    ``first``: node ids to run before the others. Also returns the first failing node id ('' if none)."""
    import signal

    t = time.perf_counter()
    killer_file = cwd / ".mutants_killer"
    if killer_file.exists():
        killer_file.unlink()
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

            plugins = [_OrderPlugin(list(first or []), str(killer_file)), _Threads()]
            if callmap_target is not None:
                plugins.append(_CallMap(callmap_target, str(cwd / ".mutants_callmap.json")))
            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *extra, *tests], plugins=plugins))
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            res = "survived" if rc == 0 else ("killed" if rc == 1 else f"error{rc}")
            killer = killer_file.read_text() if killer_file.exists() else ""
            return res, time.perf_counter() - t, killer
        if time.perf_counter() - t > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            killer = killer_file.read_text() if killer_file.exists() else ""
            return "timeout", time.perf_counter() - t, killer
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
    ap.add_argument("--keep-plugins", action="store_true",
                    help="keep napari's and pytest-qt's pytest plugins (dropped by default: they import napari and Qt "
                         "in every run, ~3 s; no module's test selection needs them)")
    ap.add_argument("--no-reorder", action="store_true", help="keep pytest's order (no killer-first ordering)")
    ap.add_argument("--all-tests", action="store_true",
                    help="run every selected test for every mutant (default: only the tests that call the function "
                         "holding the mutated line, found by a profiled clean run; module-level lines: all tests)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of an earlier run of the same module and pytest arguments in the JSON (its "
                         "tests must be among --tests: tests may be added, e.g. slow ones for the survivors); run the "
                         "rest")
    ap.add_argument("--rerun-timeouts", action="store_true",
                    help="with --resume: run the kept timeouts again (e.g. with a larger --timeout-factor, when a "
                         "busy machine, not the mutant, made them slow)")
    ap.add_argument("--rerun-survived", action="store_true",
                    help="with --resume: run the kept survivors again (after tests were added; kills stay kills "
                         "as long as no test was removed or weakened)")
    args = ap.parse_args(argv)
    import shlex

    extra = shlex.split(args.pytest_args)
    if not args.keep_plugins:
        extra = [*LEAN, *extra]
    src = (ROOT / args.module).read_text()
    all_sites = sites(ast.parse(src))
    n_sites = len(all_sites)
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
        res, base_s, _ = runner(work, args.tests, 900, extra, None, None if args.all_tests else target)
        callmap = {}
        if not args.all_tests:
            cm = work / ".mutants_callmap.json"
            if runner is run_forked and cm.exists():
                callmap = {int(k): v for k, v in json.loads(cm.read_text()).items()}
            else:
                args.all_tests = True
        funcs = functions(ast.parse(src))
        if res != "survived":
            print(f"the clean tree does not pass {args.tests} ({res}); fix that first", file=sys.stderr)
            return 2
        print(f"clean run {base_s:.1f} s; {len(chosen)} of {n_sites} sites", flush=True)
        out = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"mutants_{Path(args.module).stem}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        killers: list[str] = []
        previous = {}
        meta_resumed_from = {}
        if args.resume and out.exists():
            old = json.loads(out.read_text())
            # the same module and pytest arguments, and the same tests or more (tests added: kills stay kills)
            if (old.get("module"), old.get("pytest_args")) == (args.module, args.pytest_args) \
                    and set(old.get("tests", [])) <= set(args.tests):
                previous = {r["site"]: r for r in old.get("rows", [])}
                added = [t for t in args.tests if t not in old.get("tests", [])]
                print(f"resuming: {len(previous)} rows kept from {out}"
                      + (f"; tests added since: {added}" if added else ""), flush=True)
                if added:
                    meta_resumed_from = {"resumed_from_tests": old.get("tests", [])}
        meta = {"module": args.module, "tests": args.tests, "pytest_args": args.pytest_args,
                "per_function_tests": not args.all_tests, "reorder": not args.no_reorder,
                "rerun_survived": bool(args.resume and args.rerun_survived), "sites_total": n_sites, "lines": args.lines, "max": args.max, "seed": args.seed,
                "sites_chosen": len(chosen),
                "clean_s": round(base_s, 1), **meta_resumed_from}

        def dump(complete: bool, extra_meta: dict | None = None) -> None:
            done = {r["site"] for r in rows}  # kept rows not reached yet stay in the file (a resumed run cut short)
            allrows = rows + [r for i, r in previous.items() if i not in done]
            surv = [r for r in allrows if r["result"] == "survived"]
            out.write_text(json.dumps({**meta, "complete": complete, "mutants": len(allrows), "survived": len(surv),
                                       "survived_share": len(surv) / len(allrows) if allrows else 0.0,
                                       **(extra_meta or {}), "rows": allrows}, indent=1))
        t_start = time.perf_counter()
        try:
            for k, (i, line, desc) in enumerate(chosen):
                if i in previous and previous[i].get("line") == line and previous[i].get("mutation") == desc \
                        and not (args.rerun_survived and previous[i]["result"] == "survived") \
                        and not (args.rerun_timeouts and previous[i]["result"] == "timeout"):
                    rows.append(previous[i])
                    if previous[i].get("killed_by") and previous[i]["killed_by"] not in killers:
                        killers.append(previous[i]["killed_by"])
                    continue
                tests = args.tests
                if not args.all_tests:
                    sub = tests_for_line(line, funcs, callmap)
                    if sub == []:  # no test calls the function: the mutant cannot change any test's outcome
                        rows.append({"site": i, "line": line, "mutation": desc, "result": "survived", "s": 0.0,
                                     "killed_by": "", "note": "not run: no selected test calls this function"})
                        print(f"[{k + 1}/{len(chosen)}] line {line:4d} {desc:28s} SURVIVED (not called)", flush=True)
                        dump(False)
                        continue
                    if sub is not None:
                        tests = sub
                try:
                    target.write_text(mutate_source(src, i))
                except Exception as exc:  # an unparsable mutant counts as killed by the compiler
                    rows.append({"site": i, "line": line, "mutation": desc, "result": f"invalid {exc!r}"})
                    continue
                first = [] if args.no_reorder else killers
                r, s, killer = runner(work, tests, max(30.0, args.timeout_factor * base_s), extra, first)
                rows.append({"site": i, "line": line, "mutation": desc, "result": r, "s": round(s, 1),
                             "killed_by": killer, "n_tests": len(tests) if tests is not args.tests else "all"})
                if killer and not args.no_reorder:
                    if killer in killers:
                        killers.remove(killer)
                    killers.insert(0, killer)
                mark = "SURVIVED" if r == "survived" else f"{r} by {killer}"
                print(f"[{k + 1}/{len(chosen)}] line {line:4d} {desc:28s} {mark}", flush=True)
                dump(False)
        finally:
            target.write_text(src)
        check = {}
        if killers:  # the reordering alone must not fail anything on the clean tree
            cres, cs, ck = runner(work, args.tests, 900, extra, killers)
            check = {"clean_rerun_in_final_order": cres, "clean_rerun_failed": ck}
            print(f"clean tree in the final killer-first order: {cres} {ck}", flush=True)
        dump(True, {"wall_s": round(time.perf_counter() - t_start, 1), **check})
    surv = [r for r in rows if r["result"] == "survived"]
    n = len(rows)
    share = len(surv) / n if n else 0.0
    print(f"{args.module}: {n} mutants, {n - len(surv)} killed, {len(surv)} survived ({share:.1%})")
    for r in surv:
        print(f"  survivor: line {r['line']} {r['mutation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
