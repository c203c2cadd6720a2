"""The distribution as a user meets it: imports, lazy extras, console scripts, interop."""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_imports_do_not_pull_heavy_extras():
    out = _run(
        "import sys, json, tensorkernels, tensorrpca, ebsd, diffusion, llmeff\n"
        "print(json.dumps({m: m in sys.modules for m in ('napari', 'diffusers', 'transformers', 'qtpy')}))"
    )
    loaded = json.loads(out.strip().splitlines()[-1])
    assert loaded == {"napari": False, "diffusers": False, "transformers": False, "qtpy": False}


def test_packages_respect_the_dependency_direction():
    # at run time too: tensorkernels imports none of the others; llmeff never imports the imaging packages
    out = _run(
        "import sys, json\n"
        "import tensorkernels\n"
        "a = [m for m in ('tensorrpca', 'ebsd', 'diffusion', 'llmeff') if m in sys.modules]\n"
        "import llmeff, llmeff.cli\n"
        "b = [m for m in ('tensorrpca', 'ebsd', 'diffusion') if m in sys.modules]\n"
        "import ebsd, ebsd.cli, ebsd.commands.info, ebsd.commands.recover\n"
        "c = [m for m in ('diffusion',) if m in sys.modules]\n"
        "print(json.dumps([a, b, c]))"
    )
    assert json.loads(out.strip().splitlines()[-1]) == [[], [], []]


# -- the import graph, read from the source (every import, including the lazy ones inside functions) ------
OURS = ("tensorkernels", "tensorrpca", "ebsd", "diffusion", "llmeff")
# who may import whom: tensorkernels <- tensorrpca <- ebsd <- diffusion; tensorkernels <- llmeff (layers:
# a package may use anything below it in its chain, nothing above it and nothing in the other chain)
ALLOWED = {
    "tensorkernels": set(),
    "tensorrpca": {"tensorkernels"},
    "ebsd": {"tensorkernels", "tensorrpca"},
    "diffusion": {"tensorkernels", "tensorrpca", "ebsd"},
    "llmeff": {"tensorkernels"},
}


def _module_exists(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported_packages(source: str, filename: str) -> set[str]:
    """Top-level names of our packages that one file imports: import statements (anywhere, lazy ones
    included), importlib.import_module / __import__ calls with a literal name, and string constants that
    name one of our modules by its dotted path (lazy-import tables such as ``{"X": "pkg.module"}``)."""
    found = set()
    for node in ast.walk(ast.parse(source, filename)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if fname in ("import_module", "__import__", "find_spec"):
                names = [node.args[0].value]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value.split(".")[0] in OURS and node.value.replace(".", "").replace("_", "").isalnum() \
                and _module_exists(node.value):
            names = [node.value]
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in OURS)
    return found


def _import_graph() -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: [files that import it]}} over every .py file of our five packages."""
    graph: dict[str, dict[str, list[str]]] = {p: {} for p in OURS}
    for pkg in OURS:
        files = sorted((REPO / pkg).rglob("*.py"))
        assert files, f"no sources found for {pkg}"
        for f in files:
            for dep in _imported_packages(f.read_text(encoding="utf-8"), str(f)) - {pkg}:
                graph[pkg].setdefault(dep, []).append(str(f.relative_to(REPO)))
    return graph


def test_import_graph_runs_one_way():
    graph = _import_graph()
    wrong = {f"{pkg} -> {dep}": files for pkg, deps in graph.items() for dep, files in deps.items()
             if dep not in ALLOWED[pkg]}
    assert not wrong, f"imports against the package graph: {wrong}"
    # the chain's links are really there (so the scan above does see imports)
    for pkg, dep in [("tensorrpca", "tensorkernels"), ("ebsd", "tensorrpca"), ("diffusion", "ebsd"),
                     ("llmeff", "tensorkernels")]:
        assert dep in graph[pkg], f"expected {pkg} -> {dep}"


@pytest.mark.parametrize("snippet, expected", [
    ("import diffusion.model", {"diffusion"}),
    ("def f():\n    from diffusion import MultimodalDiffusion", {"diffusion"}),
    ("import importlib\nimportlib.import_module('llmeff')", {"llmeff"}),
    ("_LAZY = {'X': 'diffusion.model'}", {"diffusion"}),
    ("from . import volume\nimport numpy\nx = 'a diffusion model. llmeff'", set()),
])
def test_import_scan_sees_lazy_and_dynamic_imports(snippet, expected):
    assert _imported_packages(snippet, "<snippet>") == expected


# -- our import names are ours alone ---------------------------------------------------------------------
def _our_distribution():
    try:
        return importlib.metadata.distribution("ebsd-tensor-toolkit")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("ebsd-tensor-toolkit is not installed in this environment (source tree only)")


def test_no_other_distribution_claims_our_import_names():
    dist = _our_distribution()
    # the distribution ships exactly our five import packages (a new one must join OURS, and this guard)
    assert set((dist.read_text("top_level.txt") or "").split()) == set(OURS)
    claims = importlib.metadata.packages_distributions()
    for name in OURS:
        owners = {d.lower().replace("_", "-") for d in claims.get(name, [])}
        assert owners == {"ebsd-tensor-toolkit"}, f"import name {name!r} is claimed by {sorted(owners)}"


def test_hf_stack_and_our_packages_in_one_process_from_the_repository_root():
    """transformers (which imports Hugging Face's ``kernels`` at start-up) and diffusers next to our five
    packages, in one process started in the repository root, where our folders come first on sys.path."""
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    code = (
        "import json, sys\n"
        "import transformers, diffusers, tensorkernels, tensorrpca, ebsd, diffusion, llmeff\n"
        "import importlib.util, torch\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "hf_kernels = None if spec is None else spec.origin\n"
        "cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,\n"
        "    num_attention_heads=4, num_key_value_heads=2)\n"
        "torch.manual_seed(0); m = transformers.LlamaForCausalLM(cfg).eval()\n"
        "out = m.generate(torch.randint(0, 97, (2, 7)), max_new_tokens=3, do_sample=False)\n"
        "unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),\n"
        "    down_block_types=('DownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'UpBlock2D'), norm_num_groups=4)\n"
        "y = unet(torch.randn(1, 1, 8, 8), 3).sample\n"
        "print(json.dumps({'cwd_first': sys.path[0] in ('', '.'), 'hf_kernels': hf_kernels,\n"
        "    'ours': [sys.modules[n].__file__ for n in ('tensorkernels', 'tensorrpca', 'ebsd', 'diffusion', 'llmeff')],\n"
        "    'gen': list(out.shape), 'unet': list(y.shape)}))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["cwd_first"], "the process should have the repository root first on sys.path"
    assert [Path(f).resolve() for f in got["ours"]] == [REPO / n / "__init__.py" for n in OURS]
    assert got["gen"] == [2, 10] and got["unet"] == [1, 1, 8, 8]
    stale = sorted(str(p.relative_to(REPO)) for p in (REPO / "kernels").rglob("*.py"))
    assert not stale, f"remove the old folder kernels/ (renamed tensorkernels/): it still holds {stale}"
    try:
        hf = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return  # an older transformers that does not need Hugging Face's kernels: nothing can shadow it
    # Hugging Face's kernels is installed: the name resolves to its own files, not to a folder of ours
    assert got["hf_kernels"] and Path(got["hf_kernels"]).resolve() == Path(hf.locate_file("kernels/__init__.py")).resolve()


def test_ebsdtk_enhance_is_found_through_its_entry_point(tmp_path):
    """``enhance`` lives in diffusion (ebsd never imports it) and reaches ``ebsdtk`` by entry point."""
    from ebsd.cli import ENTRY_POINT_GROUP, build_parser

    _our_distribution()
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert eps.get("enhance") == "diffusion.cli", f"entry points of {ENTRY_POINT_GROUP}: {eps}"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"info", "recover", "rpca", "enhance", "batch"} <= set(sub.choices)
    # the installed console script, started away from the repository (its metadata, not a source tree's)
    exe = BIN / "ebsdtk"
    if not exe.exists():
        pytest.skip("ebsdtk console script not installed in this environment")
    res = subprocess.run([str(exe), "enhance", "--help"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "super-resolve" in res.stdout and "denoise-pl" in res.stdout and "boundaries" in res.stdout
    assert "unavailable" not in res.stderr and "ignored" not in res.stderr


def test_python_m_diffusion_runs_enhance_without_entry_points(tmp_path):
    """In a source tree that was never installed (no metadata on sys.path) ``python -m diffusion enhance``
    still works; ``python -m ebsd`` lists only its own commands there, and says nothing is broken."""
    code = (
        "import importlib.metadata as md, runpy, sys\n"
        "md.entry_points = lambda **kw: []\n"
        "mod = sys.argv[1]\n"
        "sys.argv = [mod] + sys.argv[2:]\n"
        "runpy.run_module(mod, run_name='__main__', alter_sys=True)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, "diffusion", "enhance", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "super-resolve" in res.stdout
    res = subprocess.run([sys.executable, "-c", code, "ebsd", "enhance", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2 and "invalid choice: 'enhance'" in res.stderr


def test_a_broken_command_plugin_is_reported_not_fatal(monkeypatch, capsys):
    from ebsd import cli

    class BrokenEP:
        name, value = "broken", "no_such_package_xyz.cli"

        def load(self):
            import no_such_package_xyz  # noqa: F401

    class TakenEP:
        name, value = "info", "elsewhere.cli"

        def load(self):  # pragma: no cover - never loaded: the name is taken by ebsd's own command
            raise AssertionError("a taken name must not be loaded")

    class Liar:  # its entry point says "liar", its register() claims ebsd's own "info"
        @staticmethod
        def register(subparsers):
            subparsers.add_parser("info")

    class LiarEP:
        name, value = "liar", "liar.cli"

        def load(self):
            return Liar

    monkeypatch.setattr(cli, "_entry_point_commands",
                        lambda: [("broken", BrokenEP()), ("info", TakenEP()), ("liar", LiarEP())])
    parser = cli.build_parser()
    err = capsys.readouterr().err
    assert "command 'broken' (no_such_package_xyz.cli) is unavailable: ModuleNotFoundError" in err
    assert "command 'info' from entry point 'elsewhere.cli' ignored" in err
    assert "command 'liar' (liar.cli) is unavailable: ValueError: its register() adds ['info']" in err
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "broken" not in sub.choices and "liar" not in sub.choices and "recover" in sub.choices
    assert parser.parse_args(["info", "x.ang"]).command == "info"  # ebsd's own command still works


@pytest.mark.parametrize("prog", ["ebsdtk", "llmeff"])
def test_console_scripts_help_and_version(prog):
    exe = BIN / prog
    if not exe.exists():
        pytest.skip(f"{prog} console script not installed in this environment")
    h = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert h.returncode == 0 and "usage:" in h.stdout
    v = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and v.stdout.strip().startswith(prog)
