"""ebsd.batch as a newcomer uses it (issue 24): reachable after ``import ebsd`` alone, and a script without the
``if __name__ == "__main__":`` guard works (thread workers, with a warning) instead of dying in the workers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("distributed")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONWARNINGS"] = "default"
    return env


def test_batch_is_an_attribute_of_ebsd_and_import_stays_light():
    code = ("import sys, ebsd; heavy = [m for m in ('ebsd.batch', 'distributed', 'dask', 'napari') if m in sys.modules]; "
            "assert not heavy, heavy; import ebsd as e; print(e.batch.run.__module__, e.io.save_volume.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ebsd.batch", "save_volume"]
    import ebsd

    with pytest.raises(AttributeError, match="no attribute 'bacth'"):
        ebsd.bacth


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from ebsd import save_volume
    from ebsd.synthetic import synthetic_volume

    root = tmp_path_factory.mktemp("scans")
    for i in range(2):
        save_volume(synthetic_volume((3, 10, 10), mean_grain_size=4, seed=i), root / "in" / f"v{i}.dream3d")
    return root


SCRIPT = """
import json, ebsd
{guard}records = ebsd.batch.run("info", "in", "out{tag}", workers=2, progress=False)
{guard}print("STATUS", json.dumps([r["status"] for r in records]))
"""


@pytest.mark.parametrize("guarded", [False, True])
def test_script_with_and_without_main_guard(scans, guarded):
    tag = "_guarded" if guarded else ""
    body = SCRIPT.format(guard="    " if guarded else "", tag=tag)
    if guarded:
        body = body.replace('import json, ebsd\n', 'import json, ebsd\nif __name__ == "__main__":\n')
    script = scans / f"run{tag}.py"
    script.write_text(textwrap.dedent(body))
    out = subprocess.run([sys.executable, script.name], cwd=scans, capture_output=True, text=True, env=_env(),
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'STATUS ["ok", "ok"]' in out.stdout
    warned = "without `if __name__ == \"__main__\":`" in out.stderr
    assert warned is (not guarded), out.stderr[-2000:]
    assert "Nanny failed" not in out.stderr
    man = json.loads((scans / f"out{tag}" / "manifest.json").read_text())
    assert [r["metrics"]["shape"] for r in man["records"]] == [[3, 10, 10], [3, 10, 10]]


def test_unguarded_detection_reads_the_call_site(tmp_path):
    """A call inside a function that the unguarded top level calls is still unguarded; inside the guard it is not."""
    src = textwrap.dedent('''
        from ebsd.batch import unguarded_main_script
        def f():
            return unguarded_main_script()
        top = f()
        if __name__ == "__main__":
            print("TOP", top is not None, "GUARDED", f() is not None)
        ''')
    p = tmp_path / "probe.py"
    p.write_text(src)
    out = subprocess.run([sys.executable, str(p)], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.stdout.split() == ["TOP", "True", "GUARDED", "False"], out.stderr


def test_python_dash_m_package_needs_no_guard(tmp_path):
    """``python -m ebsd batch ...`` (a package's ``__main__``, which spawn never runs again) keeps processes."""
    pkg = tmp_path / "probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("from ebsd.batch import unguarded_main_script\nprint('M', unguarded_main_script())\n")
    (tmp_path / "probe_mod.py").write_text("from ebsd.batch import unguarded_main_script\nprint('M', unguarded_main_script())\n")
    env = _env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    out = subprocess.run([sys.executable, "-m", "probe_pkg"], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["M", "None"], out.stderr
    out = subprocess.run([sys.executable, "-m", "probe_mod"], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split()[0] == "M" and out.stdout.split()[1].endswith("probe_mod.py"), out.stderr
