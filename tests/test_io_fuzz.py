"""Fuzz the readers: seeded mutations of valid .ang, .ctf, .dream3d, EDAX OIM .h5, .h5ebsd, Oxford .h5oina,
Bruker h5ebsd and EMsoft files.

Each mutated file must either load into a sane :class:`EBSDVolume` or raise :class:`EBSDFormatError`;
no other exception may escape and every read must finish quickly. Mutations: truncation, byte flips,
dropped header lines, wrong column counts, NaN/garbage numbers (text); truncation, byte flips, wrong dataset
shapes/dtypes, deleted datasets, NaN, bad geometry and codes (HDF5). Byte-level HDF5 mutations run in a
child process, so that a crash inside libhdf5 fails this test instead of killing the test run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from _io_files import (random_volume, write_bruker_h5, write_emsoft_h5, write_h5ebsd, write_h5oina,
                       write_oim_h5)
from ebsd import EBSDFormatError, EBSDVolume
from ebsd.io import load_volume, save_volume

pytestmark = pytest.mark.timeout(120)

PER_READ_S = 5.0
N_ANG = 130
N_CTF = 100
N_H5_STRUCT = 60
N_H5_BYTES = 60


def _check(path, **kw) -> str:
    """Load ``path``: 'ok' (sane volume) or 'error' (EBSDFormatError); anything else fails the test."""
    t = time.perf_counter()
    try:
        vol = load_volume(path, **kw)
    except EBSDFormatError as exc:
        assert str(path) in str(exc) or Path(path).name in str(exc), f"error does not name the file: {exc}"
        res = "error"
    else:
        assert isinstance(vol, EBSDVolume)
        assert torch.isfinite(vol.quaternions).all()
        assert torch.allclose(vol.quaternions.norm(dim=-1), torch.ones(()), atol=1e-3)
        assert all(np.isfinite(vol.spacing)) and min(vol.spacing) > 0
        assert vol.phases.shape == vol.shape
        res = "ok"
    dt = time.perf_counter() - t
    assert dt < PER_READ_S, f"reading {path} took {dt:.1f} s"
    return res


# ------------------------------------------------------------------------------------------------ .ang
def _ang_source(tmp_path) -> bytes:
    vol = random_volume((1, 6, 7), seed=0)
    p = save_volume(vol, tmp_path / "src.ang")
    return p.read_bytes()


def _mutate_text(src: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    lines = src.decode().splitlines(keepends=True)
    hdr = [i for i, l in enumerate(lines) if l.startswith("#")]
    data = [i for i, l in enumerate(lines) if not l.startswith("#")]
    kind = rng.choice(["truncate", "flip", "drop_header", "drop_column", "add_column", "nan", "garbage",
                       "drop_row", "dup_row", "swap_xy", "big_number", "binary", "empty", "header_value"])
    if kind == "truncate":
        return kind, src[: int(rng.integers(0, len(src)))]
    if kind == "flip":
        b = bytearray(src)
        for _ in range(int(rng.integers(1, 20))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= int(rng.integers(1, 256))
        return kind, bytes(b)
    if kind == "drop_header":
        for i in sorted(rng.choice(hdr, size=int(rng.integers(1, 6)), replace=False), reverse=True):
            del lines[i]
    elif kind in ("drop_column", "add_column", "nan", "garbage", "big_number", "swap_xy"):
        for i in rng.choice(data, size=int(rng.integers(1, 4)), replace=False):
            f = lines[i].split()
            j = int(rng.integers(0, len(f)))
            if kind == "drop_column":
                del f[j]
            elif kind == "add_column":
                f.insert(j, "1.0")
            elif kind == "nan":
                f[j] = rng.choice(["nan", "NaN", "inf", "-inf"])
            elif kind == "garbage":
                f[j] = rng.choice(["abc", "1.2.3", "--", "0x1F", "1e999"])
            elif kind == "big_number":
                f[j] = "123456789.0"
            else:
                f[3], f[4] = f[4], f[3]
            lines[i] = " ".join(f) + "\n"
    elif kind == "drop_row":
        del lines[int(rng.choice(data))]
    elif kind == "dup_row":
        i = int(rng.choice(data))
        lines.insert(i, lines[i])
    elif kind == "binary":
        return kind, bytes(rng.integers(0, 256, size=int(rng.integers(1, 2000)), dtype=np.uint8))
    elif kind == "empty":
        return kind, b""
    elif kind == "header_value":
        targets = [i for i in hdr if any(k in lines[i] for k in ("NROWS", "NCOLS", "XSTEP", "Symmetry", "GRID",
                                                                  "LatticeConstants", "Phase"))]
        i = int(rng.choice(targets))
        key = lines[i].split(":")[0] if ":" in lines[i] else " ".join(lines[i].split()[:2])
        lines[i] = f"{key} {rng.choice(['-3', '0', 'x', '1e9', '', 'HexGrid', '999', 'nan'])}\n"
    return kind, "".join(lines).encode()


def test_fuzz_ang(tmp_path):
    src = _ang_source(tmp_path)
    rng = np.random.default_rng(1234)
    results = {"ok": 0, "error": 0}
    kinds = set()
    unchanged = 0
    t0 = time.perf_counter()
    for n in range(N_ANG):
        kind, data = _mutate_text(src, rng)
        kinds.add(kind)
        unchanged += data == src
        p = tmp_path / f"m{n:03d}.ang"
        p.write_bytes(data)
        results[_check(p)] += 1
        p.unlink()
    assert sum(results.values()) == N_ANG and unchanged <= N_ANG // 20, (results, unchanged)  # really mutated
    assert len(kinds) >= 10
    assert results["error"] > N_ANG // 3, results  # most mutations must be caught
    assert time.perf_counter() - t0 < 40


# ------------------------------------------------------------------------------------------------ .ctf
def _ctf_source(tmp_path) -> bytes:
    vol = random_volume((1, 6, 7), seed=0)
    return save_volume(vol, tmp_path / "src.ctf").read_bytes()


def _mutate_ctf(src: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    lines = src.decode().splitlines(keepends=True)
    start = next(i for i, l in enumerate(lines) if l.startswith("Phase\tX\tY")) + 1
    hdr = list(range(start))
    data = list(range(start, len(lines)))
    kind = str(rng.choice(["truncate", "flip", "drop_header", "drop_column", "add_column", "nan", "garbage",
                           "drop_row", "dup_row", "swap_xy", "big_number", "binary", "empty", "header_value",
                           "interactive", "hex_shift", "bad_phase"]))
    if kind == "truncate":
        return kind, src[: int(rng.integers(0, len(src)))]
    if kind == "flip":
        b = bytearray(src)
        for _ in range(int(rng.integers(1, 20))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= int(rng.integers(1, 256))
        return kind, bytes(b)
    if kind == "binary":
        return kind, bytes(rng.integers(0, 256, size=int(rng.integers(1, 2000)), dtype=np.uint8))
    if kind == "empty":
        return kind, b""
    if kind == "drop_header":
        for i in sorted(rng.choice(hdr, size=int(rng.integers(1, 4)), replace=False), reverse=True):
            del lines[i]
    elif kind == "interactive":
        lines = [l.replace("JobMode\tGrid", "JobMode\tInteractive") for l in lines]
    elif kind == "hex_shift":  # odd rows offset by half a step
        for i in data:
            f = lines[i].rstrip("\r\n").split("\t")
            if round(float(f[2]) / 0.25) % 2:
                f[1] = f"{float(f[1]) + 0.125:.4f}"
            lines[i] = "\t".join(f) + "\r\n"
    elif kind == "header_value":
        targets = [i for i in hdr if lines[i].split("\t")[0] in ("XCells", "YCells", "XStep", "YStep", "Phases")
                   or ";" in lines[i]]
        i = int(rng.choice(targets))
        f = lines[i].rstrip("\r\n").split("\t")
        f[int(rng.integers(0, len(f)))] = str(rng.choice(["-3", "0", "x", "1e9", "", "999", "nan", "12", "1;2"]))
        lines[i] = "\t".join(f) + "\r\n"
    elif kind in ("drop_row", "dup_row"):
        i = int(rng.choice(data))
        if kind == "drop_row":
            del lines[i]
        else:
            lines.insert(i, lines[i])
    else:
        for i in rng.choice(data, size=int(rng.integers(1, 4)), replace=False):
            f = lines[i].split()
            j = int(rng.integers(0, len(f)))
            if kind == "drop_column":
                del f[j]
            elif kind == "add_column":
                f.insert(j, "1.0")
            elif kind == "nan":
                f[j] = str(rng.choice(["nan", "NaN", "inf", "-inf"]))
            elif kind == "garbage":
                f[j] = str(rng.choice(["abc", "1.2.3", "--", "0x1F", "1e999"]))
            elif kind == "big_number":
                f[j] = "123456789.0"
            elif kind == "bad_phase":
                f[0] = str(rng.choice(["7", "-1", "1.5"]))
            else:
                f[1], f[2] = f[2], f[1]
            lines[i] = "\t".join(f) + "\r\n"
    return kind, "".join(lines).encode()


def test_fuzz_ctf(tmp_path):
    src = _ctf_source(tmp_path)
    rng = np.random.default_rng(4321)
    results = {"ok": 0, "error": 0}
    kinds = set()
    t0 = time.perf_counter()
    for n in range(N_CTF):
        kind, data = _mutate_ctf(src, rng)
        kinds.add(kind)
        p = tmp_path / f"m{n:03d}.ctf"
        p.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[_check(p)] += 1
        p.unlink()
    assert len(kinds) >= 12
    assert results["error"] > N_CTF // 3, results
    assert time.perf_counter() - t0 < 40


# ------------------------------------------------------------------------------------------------ HDF5 (structural)
def _h5_sources(tmp_path) -> dict[str, Path]:
    vol = random_volume((3, 4, 5), seed=1)
    return {
        "dream3d": save_volume(vol, tmp_path / "src.dream3d"),
        "oim": write_oim_h5(tmp_path / "src.h5", vol),
        "h5ebsd": write_h5ebsd(tmp_path / "src.h5ebsd", vol),
        "h5oina": write_h5oina(tmp_path / "src.h5oina", vol),
        "bruker": write_bruker_h5(tmp_path / "src.bruker.h5", vol),
        "emsoft": write_emsoft_h5(tmp_path / "src.emsoft.h5", random_volume((1, 4, 5), seed=1, two_phase=False)),
    }


def _datasets(f) -> list[str]:
    import h5py

    out = []
    f.visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(out)


def _mutate_h5(path: Path, rng: np.random.Generator) -> str:
    import h5py

    with h5py.File(path, "a") as f:
        names = _datasets(f)
        name = str(rng.choice(names))
        ds = f[name]
        kind = str(rng.choice(["delete", "reshape", "dtype_str", "nan", "scalar", "negative", "huge", "empty",
                               "int_to_float", "delete_group"]))
        shape, dtype = ds.shape, ds.dtype
        data = ds[()]
        if kind == "delete_group":
            parent = name.rsplit("/", 1)[0] if "/" in name else name
            del f[parent]
            return f"{kind}:{parent}"
        del f[name]
        if kind == "delete":
            pass
        elif kind == "reshape":
            n = int(np.prod(shape)) if shape else 1
            f[name] = np.zeros(max(1, n + int(rng.integers(-3, 4))), dtype=dtype if dtype.kind in "fiu" else "f4")
        elif kind == "dtype_str":
            f[name] = np.bytes_("garbage")
        elif kind == "nan":
            a = np.array(data, dtype=np.float32 if dtype.kind in "iub" else dtype)
            if a.size and a.dtype.kind == "f":
                a.flat[int(rng.integers(0, a.size))] = np.nan
            f[name] = a
        elif kind == "scalar":
            f[name] = 7
        elif kind == "negative":
            a = np.array(data)
            if a.dtype.kind in "fi":
                a = -np.abs(a) - 1
            f[name] = a
        elif kind == "huge":
            a = np.array(data)
            if a.dtype.kind in "fiu":
                a = np.full_like(a, min(np.iinfo(a.dtype).max, np.iinfo(np.int32).max) if a.dtype.kind in "iu" else 1e30)
            f[name] = a
        elif kind == "empty":
            f[name] = np.zeros((0,), np.float32)
        elif kind == "int_to_float":
            a = np.array(data)
            f[name] = a.astype(np.float64) + 0.5 if a.dtype.kind in "iuf" else a
        return f"{kind}:{name}"


@pytest.mark.parametrize("fmt", ["dream3d", "oim", "h5ebsd", "h5oina", "bruker", "emsoft"])
def test_fuzz_hdf5_structure(tmp_path, fmt):
    import shutil

    src = _h5_sources(tmp_path)[fmt]
    rng = np.random.default_rng({"dream3d": 1, "oim": 2, "h5ebsd": 3, "h5oina": 4, "bruker": 5, "emsoft": 6}[fmt])
    results = {"ok": 0, "error": 0}
    labels = set()
    n = N_H5_STRUCT // 3 + 4
    for i in range(n):
        p = tmp_path / f"m{i:03d}{src.suffix}"
        shutil.copy(src, p)
        label = _mutate_h5(p, rng)
        labels.add(label.split(":")[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[_check(p, z_spacing=0.5)] += 1
        p.unlink()
    assert sum(results.values()) == n and len(labels) >= 4, (results, labels)
    # Bruker and EMsoft files carry many datasets no reader uses (pattern centres, dot-product lists ...):
    # mutating those cannot be noticed, so fewer mutations are caught there
    assert results["error"] >= (n // 6 if fmt in ("bruker", "emsoft") else n // 3), results


# ------------------------------------------------------------------------------------------------ HDF5 (bytes)
def _byte_worker(src_dir: str, out_json: str, n: int) -> None:  # pragma: no cover - runs in a child process
    """Child process: byte-level mutations of the HDF5 sources; writes one JSON line per read."""
    rng = np.random.default_rng(99)
    srcs = sorted(Path(src_dir).glob("src.*"))
    with open(out_json, "w") as out:
        for i in range(n):
            src = srcs[i % len(srcs)]
            b = bytearray(src.read_bytes())
            kind = str(rng.choice(["truncate", "flip", "flip_head", "zero_block"]))
            if kind == "truncate":
                b = b[: int(rng.integers(0, len(b)))]
            elif kind == "flip":
                for _ in range(int(rng.integers(1, 30))):
                    j = int(rng.integers(0, len(b)))
                    b[j] ^= int(rng.integers(1, 256))
            elif kind == "flip_head":  # superblock / object headers live near the start
                for _ in range(int(rng.integers(1, 8))):
                    j = int(rng.integers(0, min(len(b), 4096)))
                    b[j] ^= int(rng.integers(1, 256))
            else:
                j = int(rng.integers(0, len(b)))
                b[j:j + 512] = bytes(min(512, len(b) - j))
            p = Path(src_dir) / f"b{i:03d}{src.suffix}"
            p.write_bytes(bytes(b))
            t = time.perf_counter()
            try:
                vol = load_volume(p, z_spacing=0.5)
                ok = bool(torch.isfinite(vol.quaternions).all()) and vol.phases.shape == vol.shape
                res = "ok" if ok else "garbage"
            except EBSDFormatError as exc:
                res = "error" if str(p) in str(exc) else "unnamed"
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                res = f"escaped {type(exc).__name__}: {exc}"
            out.write(json.dumps({"i": i, "kind": kind, "file": p.name, "res": res,
                                  "s": time.perf_counter() - t}) + "\n")
            out.flush()
            p.unlink()


def test_fuzz_hdf5_bytes(tmp_path):
    _h5_sources(tmp_path)
    out = tmp_path / "results.jsonl"
    here = Path(__file__).resolve().parent
    code = (f"import sys; sys.path.insert(0, {str(here)!r}); import test_io_fuzz as t; "
            f"t._byte_worker({str(tmp_path)!r}, {str(out)!r}, {N_H5_BYTES})")
    env = dict(os.environ, PYTHONHASHSEED="0")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=55, env=env)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    assert r.returncode == 0, f"worker died after {len(rows)} reads (last: {rows[-1:]}): {r.stderr[-2000:]}"
    assert len(rows) == N_H5_BYTES
    bad = [row for row in rows if row["res"] not in ("ok", "error")]
    assert not bad, bad[:5]
    slow = [row for row in rows if row["s"] > PER_READ_S]
    assert not slow, slow[:5]

