"""IPF colours (TSL key) against orix's IPFColorKeyTSL, for every Laue class and several sample directions."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from ebsd.errors import EBSDValueError
from ebsd.orientation import ipf_colors, ipf_directions

pytest.importorskip("orix")
from orix.plot import IPFColorKeyTSL  # noqa: E402
from orix.quaternion import Orientation  # noqa: E402
from orix.quaternion import symmetry as osym  # noqa: E402
from orix.vector import Vector3d  # noqa: E402

LAUE = {
    "m-3m": osym.Oh, "6/mmm": osym.D6h, "4/mmm": osym.D4h, "-3m": osym.D3d, "mmm": osym.D2h, "2/m": osym.C2h,
    "-1": osym.Ci, "m-3": osym.Th, "4/m": osym.C4h, "-3": osym.S6, "6/m": osym.C6h,
}


@pytest.mark.parametrize("laue", list(LAUE))
@pytest.mark.parametrize("direction", [(0, 0, 1), (1, 0, 0), (0.3, -0.5, 0.8)])
def test_ipf_colors_match_orix(laue, direction):
    osy = LAUE[laue]
    rng = np.random.default_rng(zlib.crc32(f"{laue}{direction}".encode()))
    q = rng.normal(size=(2000, 4))
    o = Orientation(q / np.linalg.norm(q, axis=1, keepdims=True), osy)
    ref = IPFColorKeyTSL(osy, Vector3d(direction)).orientation2color(o)
    ours = ipf_colors(torch.from_numpy(o.data), laue, direction=direction)
    assert ours.dtype == torch.float32 and ours.shape == (2000, 3)
    assert ours.min() >= 0 and ours.max() <= 1
    err = np.abs(ours.numpy() - ref).max(-1)
    bad = err > 1e-4
    if laue == "m-3":
        # orix's sector assignment for m-3 (nearest rotated centre) leaves a few directions just outside its
        # own sector; ours are always inside. Only those may differ.
        h = (o * Vector3d(direction)).in_fundamental_sector(osy)
        outside = ~(h <= osy.fundamental_sector)
        assert not (bad & ~outside).any()
        assert bad.mean() < 0.01
    else:
        assert not bad.any(), err.max()


def test_ipf_key_corners_m3m_and_any_shape():
    # identity: sample Z = crystal [001] -> red; [101] -> green; [111] -> blue
    q = torch.tensor([[1.0, 0, 0, 0]])
    assert torch.allclose(ipf_colors(q, "m-3m"), torch.tensor([[1.0, 0, 0]]), atol=1e-6)
    from ebsd.orientation import axis_angle_to_quat

    # passive: the crystal direction of sample Z is q z q*; rotating sample z to [101] needs q = rot(-45 deg about y)
    to101 = axis_angle_to_quat(torch.tensor([0.0, 1, 0]), torch.tensor(-np.pi / 4))
    col = ipf_colors(to101[None], "m-3m")
    ref = IPFColorKeyTSL(osym.Oh).orientation2color(Orientation(to101[None].double().numpy(), osym.Oh))
    assert np.allclose(col.numpy(), ref, atol=1e-5)
    assert col[0, 1] > 0.99 and col[0, 0] < 0.02 and col[0, 2] < 0.02  # green (the key's corner, as orix's)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    out = ipf_colors(q, 43)
    assert out.shape == (2, 3, 5, 3)
    assert np.allclose(ipf_colors(q.numpy(), "m-3m"), out.numpy())  # numpy in, numpy out
    assert torch.allclose(ipf_colors(q.float(), "m-3m"), out, atol=1e-2)  # float32 work: ~1e-3 near corners
    d = ipf_directions(q, "m-3m")
    assert d.shape == (2, 3, 5, 3) and (d[..., 2] >= d[..., 0] - 1e-12).all() and (d[..., 0] >= d[..., 1] - 1e-12).all()
    with pytest.raises(EBSDValueError):
        ipf_colors(q, "m-3m", direction=(0, 0, 0))
