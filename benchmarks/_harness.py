"""Tiny shared helpers for the benchmark scripts: time a callable, print a table, write JSON.

Usage in a script under ``benchmarks/``::

    from _harness import time_call, Table, environment
    t = time_call(lambda: f(x), warmup=2, repeat=10)      # seconds, median, CUDA-synchronised
    table = Table("rpca vs tensorly", ["method", "rel. error", "time (s)"])
    table.add(["ours", 1e-7, t.median]); table.print(); table.write_json("out.json", extra={...})
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


def _sync(device: str | None = None) -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except Exception:  # pragma: no cover
        pass


@dataclass
class Timing:
    """Seconds per call over ``repeat`` timed calls after ``warmup`` untimed ones."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the measurement was."""
        return (max(self.times) - min(self.times)) / self.median if self.median > 0 else 0.0


def time_call(fn: Callable[[], Any], warmup: int = 1, repeat: int = 5, sync: bool = True) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed ones; CUDA is synchronised
    before and after each timed call when ``sync``."""
    for _ in range(warmup):
        fn()
    if sync:
        _sync()
    out = Timing()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            _sync()
        out.times.append(time.perf_counter() - t0)
    return out


def environment() -> dict[str, Any]:
    """Device, library versions, date: stored with every JSON result."""
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # pragma: no cover
        pass
    return env


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


class Table:
    """A printable, JSON-writable table of results."""

    def __init__(self, title: str, columns: Sequence[str]):
        self.title = title
        self.columns = list(columns)
        self.rows: list[list[Any]] = []

    def add(self, row: Sequence[Any]) -> None:
        if len(row) != len(self.columns):
            raise ValueError(f"row has {len(row)} cells, table has {len(self.columns)} columns")
        self.rows.append(list(row))

    def markdown(self) -> str:
        cells = [[_fmt(c) for c in r] for r in self.rows]
        lines = [f"| {' | '.join(self.columns)} |", "|" + "---|" * len(self.columns)]
        lines += [f"| {' | '.join(r)} |" for r in cells]
        return "\n".join(lines)

    def print(self) -> None:
        cells = [self.columns] + [[_fmt(c) for c in r] for r in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        print(f"\n{self.title}")
        for k, r in enumerate(cells):
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
            if k == 0:
                print("  ".join("-" * w for w in widths))
        sys.stdout.flush()

    def as_records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]

    def write_json(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"title": self.title, "environment": environment(), "rows": self.as_records()}
        if extra:
            payload.update(extra)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, path)
        return path


def results_dir() -> Path:
    """Where JSON results go: ``$OUT`` on the device machine, else ``benchmarks/results/``."""
    out = os.environ.get("BENCH_OUT") or os.environ.get("OUT")
    p = Path(out) if out else Path(__file__).resolve().parent / "results"
    p.mkdir(parents=True, exist_ok=True)
    return p
