"""Build a plain-text corpus from files that exist offline on any Linux machine with Python.

Sources (each document is one file):

* **Python standard-library sources** (``*.py`` under ``sysconfig.get_paths()['stdlib']``, or the path
  given), code and docstrings as they are. ``site-packages``/``dist-packages`` are skipped so the corpus
  does not depend on what happens to be installed.
* **Installed Python packages** (``*.py`` under ``sysconfig.get_paths()['purelib']``, the interpreter's
  site-packages), capped at ``max_site_mb``: the stdlib alone is ~10 M characters on a Debian/Ubuntu
  Python (no ``test/``), ~2.7 M tokens, far too little for minutes of H100 training (a 28 M model sees it
  60 times and memorises it). This source depends on what is installed; ``train_log.json`` records it.
* **Manual pages** (``/usr/share/man/man[1-8]/*`` , gzip or plain troff, English top-level sections only,
  translations under ``/usr/share/man/<lang>/`` are skipped), converted to text by a small troff stripper
  (:func:`troff_to_text`): comments and layout requests are dropped, the text of font/section macros kept,
  inline escapes resolved.

Held-out split: a document is held out when ``md5(source + ":" + relative path)`` mod 1000 is below
``1000 * heldout_frac`` (default 3%). The split depends only on the relative file name, so it is the same on
every machine and across runs, and a file never appears on both sides. Files are read in sorted order;
size caps (``max_mb`` per source) keep the first files in hash order, so a cap takes a uniform sample.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "idlelib", "lib2to3", "ensurepip", "_vendor"}
_MAX_FILE_BYTES = 1_000_000


@dataclass
class Corpus:
    """Documents split into ``train`` and ``heldout`` lists of strings, with per-source statistics."""

    train: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def n_chars(self) -> int:
        return sum(map(len, self.train)) + sum(map(len, self.heldout))


def _h(key: str) -> int:
    return int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16)


def is_heldout(key: str, frac: float) -> bool:
    """The deterministic held-out rule (see the module docstring)."""
    return (_h(key) % 1000) < int(round(1000 * frac))


def default_stdlib() -> Path | None:
    """The standard library of this interpreter, else the first ``/usr/lib/python3.*`` found."""
    cands = [Path(sysconfig.get_paths()["stdlib"])]
    cands += sorted(Path("/usr/lib").glob("python3.[0-9]*"), reverse=True)
    for c in cands:
        if (c / "os.py").is_file():
            return c
    return None


def stdlib_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith(".py"):
                out.append(Path(dirpath) / f)
    return out


def default_site() -> Path | None:
    p = Path(sysconfig.get_paths()["purelib"])
    return p if p.is_dir() else None


def stdlib_files_site(root: Path) -> list[Path]:
    """``*.py`` under a site-packages folder (nested vendored copies and caches skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")
                             and not d.endswith((".dist-info", ".egg-info")))
        for f in sorted(filenames):
            if f.endswith(".py"):
                out.append(Path(dirpath) / f)
    return out


def man_files(root: Path = Path("/usr/share/man")) -> list[Path]:
    out = []
    if not root.is_dir():
        return out
    for sec in sorted(root.glob("man[1-8]")):
        for p in sorted(sec.iterdir()):
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return out


_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),      # font changes \fB \fI \fR \f(CW \f[B]
    (re.compile(r"\\s[+-]?\d"), ""),                    # size changes
    (re.compile(r"\\\*(\(..|\[[^\]]*\]|.)"), ""),       # strings
    (re.compile(r"\\\((em|en)"), "--"),
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\((oq|cq|aq)"), "'"),
    (re.compile(r"\\\(bu"), "*"),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), ""),          # other named glyphs
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[&|^/,:%]"), ""),                   # zero-width / hyphenation marks
    (re.compile(r"\\e"), "\\\\"),
    (re.compile(r"\\ "), " "),
    (re.compile(r"\\\."), "."),
]
_TEXT_MACROS = {"SH", "SS", "B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB", "TP", "IP", "Nm", "Nd",
                "Sh", "Ss", "Fl", "Ar", "Op", "Pa", "Xr", "Dv", "Em", "Sy", "Li", "It", "Cm", "Ic", "Va", "Fn"}


def troff_to_text(src: str) -> str:
    """Crude troff/man(7)/mdoc(7) to plain text: enough for language-model training text."""
    lines = []
    for line in src.splitlines():
        if line.startswith(('.\\"', "'\\\"", '\\"', '.\\#')):
            continue
        if line.startswith((".", "'")):
            parts = line[1:].strip().split(None, 1)
            if not parts:
                continue
            macro = parts[0]
            if macro in ("so", "de", "ig", "ds", "nr", "ie", "el", "if", "tr", "ta", "in", "ti", "ft", "ps",
                         "ll", "nh", "hy", "ad", "na", "fi", "nf", "sp", "br", "PP", "LP", "P", "RS", "RE",
                         "TH", "Dd", "Dt", "Os", "EX", "EE", "UR", "UE", "ne", "bp", "ce", "cs", "mk", "rt"):
                if macro in ("PP", "LP", "P", "sp"):
                    lines.append("")
                continue
            if macro in _TEXT_MACROS and len(parts) > 1:
                text = parts[1].replace('"', "")
                if macro in ("SH", "Sh"):
                    lines.append("")
                lines.append(text)
            continue
        lines.append(line)
    text = "\n".join(lines)
    for pat, rep in _ESCAPES:
        text = pat.sub(rep, text)
    text = re.sub(r"\\.", "", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def _read_man(p: Path) -> str | None:
    try:
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
        elif p.suffix in (".bz2", ".xz", ".zst"):
            return None
        src = raw.decode("utf-8", errors="replace")
    except Exception:
        return None
    if src.lstrip().startswith(".so "):          # a link to another page
        return None
    return troff_to_text(src)


def calibration_texts(n_tokens: int, heldout_frac: float = 0.03, root: Path | None = None,
                      min_chars: int = 2000) -> list[str]:
    """Standard-library files *outside* the held-out split, for calibration or distillation prompts.

    Files of at least ``min_chars`` characters, in sorted path order, until about ``2 * n_tokens`` tokens
    (counting ~3 characters per token) are collected, so the caller can cut ``n_tokens`` tokens from them.
    ``root`` default: :func:`default_stdlib`.

    Raises:
        FileNotFoundError: no standard library found (pass ``root``, or give the text yourself).
    """
    root = Path(root) if root is not None else default_stdlib()
    if root is None or not Path(root).is_dir():
        raise FileNotFoundError("no Python standard library found on this machine; give a text file instead")
    texts, n = [], 0
    for p in stdlib_files(Path(root)):
        if is_heldout("stdlib:" + p.relative_to(root).as_posix(), heldout_frac):
            continue
        t = p.read_text(encoding="utf-8", errors="replace")
        if len(t) < min_chars:
            continue
        texts.append(t)
        n += len(t) // 3
        if n > 2 * n_tokens:
            break
    return texts


def build_corpus(stdlib: Path | None = None, man_root: Path | None = Path("/usr/share/man"),
                 heldout_frac: float = 0.03, max_stdlib_mb: float = 48.0, max_man_mb: float = 24.0,
                 site: Path | None | str = "auto", max_site_mb: float = 0.0, log=print) -> Corpus:
    """Read the sources, split them, return a :class:`Corpus` (see the module docstring)."""
    corpus = Corpus()
    stdlib = stdlib if stdlib is not None else default_stdlib()
    sources = []
    if stdlib is not None and Path(stdlib).is_dir():
        files = stdlib_files(Path(stdlib))
        sources.append(("stdlib", Path(stdlib), files, max_stdlib_mb, None))
    site = default_site() if site == "auto" else site
    if max_site_mb > 0 and site is not None and Path(site).is_dir():
        sfiles = [p for p in stdlib_files_site(Path(site))]
        sources.append(("site", Path(site), sfiles, max_site_mb, None))
    if man_root is not None and Path(man_root).is_dir():
        sources.append(("man", Path(man_root), man_files(Path(man_root)), max_man_mb, _read_man))
    for name, root, files, cap_mb, reader in sources:
        keyed = sorted(files, key=lambda p: _h(f"order:{p.relative_to(root).as_posix()}"))
        budget = int(cap_mb * 1e6)
        n_files = n_chars = n_held = 0
        for p in keyed:
            if n_chars >= budget:
                break
            try:
                if p.stat().st_size > _MAX_FILE_BYTES:
                    continue
                text = reader(p) if reader else p.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if not text or len(text) < 64:
                continue
            key = f"{name}:{p.relative_to(root).as_posix()}"
            if is_heldout(key, heldout_frac):
                corpus.heldout.append(text)
                n_held += 1
            else:
                corpus.train.append(text)
            n_files += 1
            n_chars += len(text)
        corpus.stats[name] = {"root": str(root), "files": n_files, "heldout_files": n_held, "chars": n_chars}
        log(f"corpus: {name} from {root}: {n_files} files ({n_held} held out), {n_chars / 1e6:.1f} M chars")
    if not corpus.train or not corpus.heldout:
        raise RuntimeError("corpus is empty: no Python stdlib found (pass --stdlib) and no man pages")
    return corpus
