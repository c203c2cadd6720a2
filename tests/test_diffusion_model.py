"""MultimodalDiffusion with a tiny randomly initialised UNet on CPU: sampling end to end, reproducibility,
save/load, misregistration estimate, CLI."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusion import CheckpointError, MultimodalDiffusion  # noqa: E402
from diffusion.data import make_pair, quat_to_channels  # noqa: E402
from diffusion.model import DATA_DIR, ModelConfig, boundary_map  # noqa: E402
from diffusion.operators import warp  # noqa: E402
from diffusion.pl import pl_images  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MultimodalDiffusion(ModelConfig.tiny())


@pytest.fixture(scope="module")
def section():
    from ebsd.synthetic import synthetic_volume

    return synthetic_volume((1, 16, 16), mean_grain_size=6.0, symmetry="6/mmm", seed=3).quaternions[0]


def _pl(model, q, **kw):
    c = model.config.pl
    return pl_images(q, angles=c.angles, analyser=c.analyser, blur_sigma=c.blur_sigma, **kw)


def test_super_resolve_end_to_end_reproducible(tiny, section):
    lr = section[2::4, 2::4]
    pl = _pl(tiny, section, read_noise=0.05, seed=1)
    kw = dict(scale=4, n_samples=3, steps=4, max_shift=0.5, max_rotation=0)
    r1 = tiny.super_resolve(lr, pl, seed=7, **kw)
    r2 = tiny.super_resolve(lr, pl, seed=7, **kw)
    r3 = tiny.super_resolve(lr, pl, seed=8, **kw)
    assert r1.quaternions.shape == (16, 16, 4) and r1.pl.shape == (6, 16, 16)
    torch.testing.assert_close(r1.quaternions.norm(dim=-1), torch.ones(16, 16), atol=1e-4, rtol=0)
    assert torch.equal(r1.samples, r2.samples) and torch.equal(r1.quaternions, r2.quaternions)
    assert not torch.equal(r1.samples, r3.samples)
    assert r1.samples.shape == (3, 15, 16, 16) and r1.scores.shape == (3,)
    assert r1.consistency.shape == (3, 3) and len(r1.diagnostics) == 3
    assert r1.chosen == sorted(r1.chosen, key=lambda i: float(r1.scores[i]))
    # numpy in, numpy out; "best" keeps one sample
    rb = tiny.super_resolve(lr.numpy(), pl.numpy(), seed=7, combine="best", **kw)
    assert isinstance(rb.quaternions, np.ndarray) and len(rb.chosen) == 1


def test_point_measurements_are_honoured(tiny, section):
    """The proximal data-consistency step makes the sampled EBSD agree with the measured points."""
    lr = section[2::4, 2::4]
    r = tiny.super_resolve(lr, _pl(tiny, section), scale=4, n_samples=1, steps=4, seed=0,
                           max_shift=0, max_rotation=0, ebsd_sigma=1e-3)
    x = r.samples[0, :9, 2::4, 2::4]
    torch.testing.assert_close(x, quat_to_channels(lr), atol=0.05, rtol=0)


def test_dps_and_denoise_and_boundaries(tiny, section):
    pl_clean = _pl(tiny, section)
    noisy = pl_clean + 0.1 * torch.randn(pl_clean.shape, generator=torch.Generator().manual_seed(0))
    r = tiny.super_resolve(section[2::4, 2::4], noisy, n_samples=2, steps=3, method="dps", max_shift=0,
                           max_rotation=0)
    assert torch.isfinite(r.samples).all()
    sparse = section.clone()
    sparse[torch.rand(16, 16, generator=torch.Generator().manual_seed(1)) > 0.1] = float("nan")
    den = tiny.denoise_pl(noisy, ebsd_sparse=sparse, n_samples=2, steps=3)
    assert den.shape == (6, 16, 16) and float(den.min()) >= 0 and float(den.max()) <= 1
    den_a = tiny.denoise_pl(noisy.numpy(), n_samples=2, steps=3, seed=5)
    den_b = tiny.denoise_pl(noisy.numpy(), n_samples=2, steps=3, seed=5)
    assert isinstance(den_a, np.ndarray)
    np.testing.assert_array_equal(den_a, den_b)
    b = tiny.grain_boundaries(noisy, n_samples=2, steps=3)
    assert b.shape == (16, 16) and b.dtype == torch.bool
    b2 = tiny.grain_boundaries(noisy.numpy(), ebsd_low_res=section[2::4, 2::4].numpy(), n_samples=2, steps=3,
                               max_shift=0, max_rotation=0)
    assert b2.shape == (16, 16) and b2.dtype == bool


def test_boundary_map_of_truth(section):
    from ebsd.orientation import misorientation_angle

    b = boundary_map(section)
    assert b.dtype == torch.bool and 0 < int(b.sum()) < 16 * 16
    # no boundary between identical neighbours
    assert not bool(boundary_map(section[:1, :1].expand(4, 4, 4).clone()).any())
    assert float(misorientation_angle(section[0, 0], section[0, 0], "6/mmm")) < 1e-3


def test_snap_to_lowres(section):
    from ebsd.orientation import misorientation_angle

    from diffusion.model import snap_to_lowres

    lr = section[2::4, 2::4]
    near = lr.repeat_interleave(4, 0).repeat_interleave(4, 1)
    out = snap_to_lowres(quat_to_channels(near), lr, 4)
    assert out.shape == (16, 16, 4)
    assert float(misorientation_angle(out, near, "6/mmm").max()) < 1e-3
    # truth channels: every output orientation is one of the measured ones, and pixels whose grain was
    # measured nearby get it back exactly
    out = snap_to_lowres(quat_to_channels(section), lr, 4)
    d = misorientation_angle(out[:, :, None, None], lr[None, None], "6/mmm").flatten(2).amin(-1)
    assert float(d.max()) < 1e-3
    assert float((misorientation_angle(out, section, "6/mmm") < 1e-3).float().mean()) > 0.6


def test_registration_recovers_shift(tiny):
    from ebsd.synthetic import synthetic_volume

    q = synthetic_volume((1, 32, 32), mean_grain_size=8.0, symmetry="6/mmm", seed=11).quaternions[0]
    x = make_pair(q, tiny.config.pl)
    pl_obs = warp(x[None, 9:], (1.0, -1.5), 0.0)[0]
    est = tiny.register(x[:9], pl_obs, max_shift=2.0, max_rotation=0.0)
    assert est["dy"] == pytest.approx(1.0, abs=0.5) and est["dx"] == pytest.approx(-1.5, abs=0.5)
    rot = warp(x[None, 9:], (0.0, 0.0), math.radians(2.0))[0]
    est = tiny.register(x[:9], rot, max_shift=0.5, max_rotation=3.0, min_gain=0.0)
    assert est["angle_deg"] == pytest.approx(2.0, abs=1.0)
    assert tiny.register(x[:9], x[9:], max_shift=2.0, max_rotation=2.0) == {"dy": 0.0, "dx": 0.0, "angle_deg": 0.0}


def test_save_load_round_trip(tiny, section, tmp_path):
    tiny.save(tmp_path / "full", half=False)
    back = MultimodalDiffusion.load(tmp_path / "full")
    assert back.config.to_dict() == tiny.config.to_dict()
    for (k, a), (_, b) in zip(tiny.unet.state_dict().items(), back.unet.state_dict().items()):
        assert torch.equal(a, b), k
    lr, pl = section[2::4, 2::4], _pl(tiny, section)
    kw = dict(n_samples=2, steps=3, seed=1, max_shift=0, max_rotation=0)
    assert torch.equal(tiny.super_resolve(lr, pl, **kw).samples, back.super_resolve(lr, pl, **kw).samples)
    with pytest.raises(FileExistsError):
        tiny.save(tmp_path / "full", half=False)
    half = MultimodalDiffusion.load(tiny.save(tmp_path / "half"))
    for (k, a), (_, b) in zip(tiny.unet.state_dict().items(), half.unet.state_dict().items()):
        torch.testing.assert_close(a.half().float(), b)
    with pytest.raises(CheckpointError):
        MultimodalDiffusion.load(tmp_path / "nothing-here")


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"ebsd-tensor-toolkit\[diffusion\]"):
        MultimodalDiffusion(ModelConfig.tiny())


def test_bundled_checkpoint_loads():
    assert (DATA_DIR / "model.safetensors").is_file(), f"the bundled checkpoint is missing from {DATA_DIR}"
    m = MultimodalDiffusion.load()
    assert m.config.channels == 9 + len(m.config.pl.angles)
    assert (DATA_DIR / "model.safetensors").stat().st_size <= 14 * 2 ** 20


def test_enhance_cli(tmp_path, section, tiny):
    from functools import partial

    from diffusion import cli
    from ebsd.cli import main

    main = partial(main, extra=[cli])  # also where ebsdtk's entry points are not installed

    ck = tiny.save(tmp_path / "ck")
    np.save(tmp_path / "lr.npy", section[2::4, 2::4].numpy())
    np.save(tmp_path / "pl.npy", _pl(tiny, section).numpy())
    out = tmp_path / "hr.npy"
    rc = main(["enhance", "super-resolve", str(tmp_path / "lr.npy"), str(tmp_path / "pl.npy"), "-o", str(out),
               "--checkpoint", str(ck), "--n-samples", "2", "--steps", "3", "--max-shift", "0"])
    assert rc == 0 and np.load(out).shape == (16, 16, 4)
    rc = main(["enhance", "denoise-pl", str(tmp_path / "pl.npy"), "-o", str(tmp_path / "den.npy"),
               "--checkpoint", str(ck), "--n-samples", "1", "--steps", "2"])
    assert rc == 0 and np.load(tmp_path / "den.npy").shape == (6, 16, 16)
    rc = main(["enhance", "boundaries", str(tmp_path / "pl.npy"), "-o", str(tmp_path / "b.npy"),
               "--checkpoint", str(ck), "--n-samples", "1", "--steps", "2"])
    assert rc == 0 and np.load(tmp_path / "b.npy").dtype == bool
    assert main(["enhance", "super-resolve", str(tmp_path / "lr.npy"), str(tmp_path / "pl.npy"), "-o", str(out),
                 "--checkpoint", str(ck)]) == 2   # exists, no --overwrite


def test_boundary_helpers_match_references():
    """Median filter, Otsu threshold and the PL-only boundary criteria against scipy / skimage / hand-made maps."""
    from scipy.ndimage import median_filter
    from skimage.filters import threshold_otsu

    from diffusion.model import median_filter_channels, otsu_threshold, pl_only_boundaries, sobel_magnitude

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 12, 11, generator=g)
    np.testing.assert_allclose(median_filter_channels(x, 3).numpy(),
                               median_filter(x.numpy(), size=(1, 1, 3, 3), mode="nearest"), atol=1e-6)
    assert torch.equal(median_filter_channels(x, 1), x)
    v = torch.cat((torch.randn(500, generator=g), 4 + torch.randn(300, generator=g)))
    assert abs(otsu_threshold(v) - float(threshold_otsu(v.numpy()))) < 0.05
    # a vertical step: Sobel responds on the two columns either side of it and nowhere else
    img = torch.zeros(2, 8, 8)
    img[:, :, 4:] = 1.0
    m = sobel_magnitude(img)
    assert float(m[:, :3].abs().max()) == 0 and float(m[:, 5:].abs().max()) == 0 and float(m[:, 3:5].min()) > 0
    # posterior samples of a two-grain section: both criteria find the boundary column, and only it
    from diffusion.data import PLConfig, make_pair

    q = torch.zeros(8, 8, 4)
    q[..., 0] = 1.0                                                  # c-axis along z (dark in PL)
    q[:, 4:] = torch.tensor([math.cos(0.6), math.sin(0.6), 0.0, 0.0])  # c tilted by 69 deg about x
    x = make_pair(q, PLConfig())[None].expand(3, -1, -1, -1)
    truth = torch.zeros(8, 8, dtype=torch.bool)
    truth[:, 3] = True
    assert torch.equal(pl_only_boundaries(x, "caxis", 15.0, 3), truth)
    edges = pl_only_boundaries(x, "pl-edges")
    assert bool(edges[:, 3:5].all()) and not bool(edges[:, :2].any()) and not bool(edges[:, 6:].any())
    with pytest.raises(Exception, match="criterion"):
        pl_only_boundaries(x, "nope")


def test_boundary_map_hand_built():
    """Hand-built answers: a pixel is on a boundary when the misorientation to its right or its lower neighbour
    exceeds the threshold (6/mmm: a 60 deg turn about c is no boundary; 20 deg about a is)."""
    def about(axis, deg):
        h = math.radians(deg) / 2
        return [math.cos(h)] + [math.sin(h) * a for a in axis]

    q = torch.tensor([1.0, 0, 0, 0]).repeat(4, 5, 1)
    # top two rows vs bottom two rows: only row 1 (its lower neighbour differs) is a boundary
    q[2:] = torch.tensor(about((1, 0, 0), 20.0))
    want = torch.zeros(4, 5, dtype=torch.bool)
    want[1] = True
    assert torch.equal(boundary_map(q), want)
    # left three columns vs right two: only column 2 is
    q = torch.tensor([1.0, 0, 0, 0]).repeat(4, 5, 1)
    q[:, 3:] = torch.tensor(about((1, 0, 0), 20.0))
    want = torch.zeros(4, 5, dtype=torch.bool)
    want[:, 2] = True
    assert torch.equal(boundary_map(q), want)
    # one odd pixel at (1, 2): its left and upper neighbours and itself
    q = torch.tensor([1.0, 0, 0, 0]).repeat(4, 5, 1)
    q[1, 2] = torch.tensor(about((0, 1, 0), 20.0))
    want = torch.zeros(4, 5, dtype=torch.bool)
    want[1, 1] = want[0, 2] = want[1, 2] = True
    assert torch.equal(boundary_map(q), want)
    np.testing.assert_array_equal(boundary_map(q.numpy()), want.numpy())
    # symmetry and threshold: 60 deg about c is the same crystal orientation; 3 deg is below 5 but above 2
    q = torch.tensor([1.0, 0, 0, 0]).repeat(3, 3, 1)
    q[1:] = torch.tensor(about((0, 0, 1), 60.0))
    assert not bool(boundary_map(q).any())
    q[1:] = torch.tensor(about((0, 0, 1), 63.0))
    assert not bool(boundary_map(q).any())
    want = torch.zeros(3, 3, dtype=torch.bool)
    want[0] = True
    assert torch.equal(boundary_map(q, threshold_deg=2.0), want)
