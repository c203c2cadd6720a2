"""Crystal symmetry: the rotation groups of the 11 Laue classes, as orix builds them.

:func:`get_symmetry` accepts a Laue class (``"m-3m"``), a proper point group (``"432"``), an orix Schoenflies
name (``"Oh"``, ``"O"``, ``"Td"``, ...), an orix ``Symmetry`` object, or an EDAX/TSL ``.ang`` symmetry code
(``43``, ``62``, ...; also as a string). Every point group maps to its Laue class, and the operators are the
proper rotations of that Laue class (EBSD cannot tell Friedel pairs apart, so e.g. ``-43m`` data is treated
as ``m-3m``, as TSL OIM and MTEX do).

Operators are unit quaternions, generated from the same generators and axes as orix
(``orix.quaternion.symmetry``): 2-fold axes along x, y, z; ``32`` has its 2-fold along x (orix ``D3x``,
TSL code 32 read by orix as ``321``); hexagonal ``622`` has 2-folds along x and y (orix ``D6``).
Orientations are passive (sample -> crystal), so the crystal symmetry acts on the left: ``q`` and
``S_i * q`` are the same orientation for every operator ``S_i``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..errors import EBSDValueError

__all__ = ["Symmetry", "get_symmetry", "LAUE_CLASSES", "TSL_CODES"]

_r2 = math.sqrt(0.5)
_r3 = math.sqrt(0.75)
_GEN = {
    "C2x": (0.0, 1.0, 0.0, 0.0),
    "C2y": (0.0, 0.0, 1.0, 0.0),
    "C2z": (0.0, 0.0, 0.0, 1.0),
    "C3z": (0.5, 0.0, 0.0, _r3),
    "C4z": (_r2, 0.0, 0.0, _r2),
    "C3xyz": (0.5, 0.5, 0.5, 0.5),
}

# proper point group -> generators (orix: C1, C2, C2y, D2, C4, D4, C3, D3x, D3y, C6, D6, T, O)
_PROPER_GENERATORS = {
    "1": (),
    "2": ("C2z",),
    "121": ("C2y",),
    "211": ("C2x",),
    "222": ("C2z", "C2x", "C2y"),
    "4": ("C4z",),
    "422": ("C4z", "C2x", "C2y"),
    "3": ("C3z",),
    "32": ("C3z", "C2x"),
    "312": ("C3z", "C2y"),
    "6": ("C3z", "C2z"),
    "622": ("C3z", "C2z", "C2x", "C2y"),
    "23": ("C2z", "C3xyz"),
    "432": ("C4z", "C3xyz", "C2x"),
}

# Laue class -> its proper rotation group, and the Schoenflies name orix gives the Laue class
LAUE_CLASSES = {
    "-1": ("1", "Ci"),
    "2/m": ("2", "C2h"),
    "mmm": ("222", "D2h"),
    "4/m": ("4", "C4h"),
    "4/mmm": ("422", "D4h"),
    "-3": ("3", "S6"),
    "-3m": ("32", "D3d"),
    "6/m": ("6", "C6h"),
    "6/mmm": ("622", "D6h"),
    "m-3": ("23", "Th"),
    "m-3m": ("432", "Oh"),
}

# EDAX/TSL .ang "Symmetry" codes (orix.io.plugins.ang reads 20 as 121, 2 as 2/m, 22 as 222, 42 as 422,
# 32 as 321, 62 as 622, 43 as 432; codes 1, 3, 4, 6, 23 are point groups of the same Laue class)
TSL_CODES = {1: "-1", 2: "2/m", 20: "2/m (121)", 22: "mmm", 4: "4/m", 42: "4/mmm", 3: "-3", 32: "-3m",
             6: "6/m", 62: "6/mmm", 23: "m-3", 43: "m-3m"}

# every accepted name (lower-cased) -> (Laue class, proper group)
_ALIASES: dict[str, tuple[str, str]] = {}


def _add(names, laue, proper=None):
    proper = proper or LAUE_CLASSES[laue][0]
    for n in names:
        assert n.lower() not in _ALIASES, n
        _ALIASES[n.lower()] = (laue, proper)


_add(["-1", "1", "C1", "Ci", "triclinic"], "-1")
_add(["2/m", "2", "112", "m", "11m", "C2", "C2z", "Cs", "Csz", "C2h", "monoclinic"], "2/m")
_add(["121", "1m1", "C2y", "Csy", "20"], "2/m", "121")
_add(["211", "m11", "C2x", "Csx"], "2/m", "211")
_add(["mmm", "222", "mm2", "D2", "C2v", "D2h", "orthorhombic", "22"], "mmm")
_add(["4/m", "4", "-4", "C4", "S4", "C4h"], "4/m")
_add(["4/mmm", "422", "4mm", "-42m", "D4", "C4v", "D2d", "D4h", "tetragonal", "42"], "4/mmm")
_add(["-3", "3", "C3", "S6"], "-3")
_add(["-3m", "32", "321", "3m", "3m1", "-3m1", "D3", "D3x", "C3v", "D3d", "trigonal"], "-3m")
_add(["312", "31m", "-31m", "D3y"], "-3m", "312")
_add(["6/m", "6", "-6", "C6", "C3h", "C6h"], "6/m")
_add(["6/mmm", "622", "6mm", "-6m2", "-62m", "D6", "C6v", "D3h", "D6h", "hexagonal", "62"], "6/mmm")
_add(["m-3", "23", "m3", "T", "Th"], "m-3")
_add(["m-3m", "432", "m3m", "-43m", "O", "Td", "Oh", "cubic", "43"], "m-3m")


def _qmul_np(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    a1, b1, c1, d1 = p
    a2, b2, c2, d2 = q
    return np.array([
        a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
        a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
        a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
        a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
    ])


def _canonical(q: np.ndarray) -> np.ndarray:
    q = np.where(np.abs(q) < 1e-12, 0.0, q)
    nz = np.flatnonzero(q)
    return -q if q[nz[0]] < 0 else q


@functools.lru_cache(maxsize=None)
def _group_operators(proper: str) -> np.ndarray:
    """Closure of the generators, one quaternion per rotation (q ~ -q), float64 (N, 4), identity first."""
    gens = [np.array(_GEN[g]) for g in _PROPER_GENERATORS[proper]]
    ops = [np.array([1.0, 0.0, 0.0, 0.0])]
    changed = True
    while changed:
        changed = False
        for a in list(ops):
            for g in gens:
                c = _canonical(_qmul_np(g, a))
                if not any(np.allclose(c, o, atol=1e-9) for o in ops):
                    ops.append(c)
                    changed = True
    out = np.stack(ops)
    # deterministic order: identity first, then by decreasing scalar part, then lexicographic
    order = sorted(range(len(out)), key=lambda i: (-round(out[i, 0], 9), *(-np.round(out[i, 1:], 9))))
    return np.ascontiguousarray(out[order]) + 0.0  # (+0.0 turns -0.0 into 0.0)


class Symmetry:
    """The rotation group of a Laue class.

    Attributes:
        name: the Laue class, e.g. ``"m-3m"``.
        proper: the proper point group whose rotations are the operators, e.g. ``"432"``.
        operators: ``(N, 4)`` float64 CPU tensor of unit quaternions (one per rotation, identity first).
        schoenflies: orix's Schoenflies name of the Laue class (e.g. ``"Oh"``).
    """

    __slots__ = ("name", "proper", "_ops", "_cache")

    def __init__(self, name: str, proper: str):
        self.name = name
        self.proper = proper
        self._ops = torch.from_numpy(_group_operators(proper).copy())
        self._cache: dict = {}

    @property
    def operators(self) -> torch.Tensor:
        return self._ops

    @property
    def schoenflies(self) -> str:
        return LAUE_CLASSES[self.name][1]

    @property
    def order(self) -> int:
        """Number of rotations (24 for ``m-3m``, 12 for ``6/mmm``)."""
        return int(self._ops.shape[0])

    def __len__(self) -> int:
        return self.order

    def operators_as(self, like: torch.Tensor) -> torch.Tensor:
        """The operators on ``like``'s device, in its floating dtype (cached)."""
        dtype = like.dtype if torch.is_floating_point(like) else torch.get_default_dtype()
        key = (like.device, dtype)
        t = self._cache.get(key)
        if t is None:
            t = self._ops.to(device=like.device, dtype=dtype)
            self._cache[key] = t
        return t

    def to_orix(self):
        """The orix ``Symmetry`` of the Laue class (needs orix)."""
        from orix.quaternion import symmetry as osym

        if self.proper in ("121", "211", "312"):
            return {"121": osym.C2y, "211": osym.C2x, "312": osym.D3y}[self.proper]
        return getattr(osym, self.schoenflies)

    def __eq__(self, other) -> bool:
        return isinstance(other, Symmetry) and (self.name, self.proper) == (other.name, other.proper)

    def __hash__(self) -> int:
        return hash((self.name, self.proper))

    def __repr__(self) -> str:
        return f"Symmetry({self.name!r}, proper={self.proper!r}, {self.order} rotations)"


@functools.lru_cache(maxsize=None)
def _make(laue: str, proper: str) -> Symmetry:
    return Symmetry(laue, proper)


def get_symmetry(name) -> Symmetry:
    """Return the :class:`Symmetry` for a Laue class, point group, Schoenflies name, orix ``Symmetry`` or
    TSL ``.ang`` code (int or digit string: 43 -> m-3m, 62 -> 6/mmm, 42 -> 4/mmm, 32 -> -3m, 22 -> mmm,
    2 -> 2/m, 1 -> -1, 23 -> m-3, 4 -> 4/m, 3 -> -3, 6 -> 6/m, 20 -> 2/m with the 2-fold along y).

    Raises:
        EBSDValueError: unknown name or code.
    """
    if isinstance(name, Symmetry):
        return name
    if hasattr(name, "name") and hasattr(name, "data") and not isinstance(name, (str, bytes)):
        name = name.name  # an orix Symmetry
    if isinstance(name, (bool,)) or name is None:
        raise EBSDValueError(f"unknown crystal symmetry {name!r}")
    if isinstance(name, (int, np.integer)):
        key = str(int(name))
        if int(name) not in TSL_CODES:
            raise EBSDValueError(
                f"unknown TSL symmetry code {int(name)}; known codes: {sorted(TSL_CODES)} "
                f"(e.g. 43 = m-3m, 62 = 6/mmm)"
            )
    elif isinstance(name, str):
        key = name.strip().replace(" ", "")
    else:
        raise EBSDValueError(f"crystal symmetry must be a name, a TSL code or a Symmetry, got {type(name).__name__}")
    hit = _ALIASES.get(key.lower())
    if hit is None:
        raise EBSDValueError(
            f"unknown crystal symmetry {name!r}; use a Laue class ({', '.join(LAUE_CLASSES)}), a proper point "
            f"group (432, 622, 422, 32, 222, 2, 1, 23, 4, 3, 6), a Schoenflies name (Oh, D6h, ...) or a TSL code"
        )
    return _make(*hit)
