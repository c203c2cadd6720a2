"""MultimodalDiffusion with a tiny randomly initialised UNet on CPU: sampling end to end, reproducibility,
save/load, misregistration estimate, CLI."""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusion import CheckpointError, MultimodalDiffusion  # noqa: E402
from diffusion.data import make_pair, quat_to_channels  # noqa: E402
from diffusion.errors import DiffusionInputError  # noqa: E402
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
    assert torch.equal(median_filter_channels(x, 1), x) and torch.equal(median_filter_channels(x, 0), x)
    assert torch.equal(median_filter_channels(x), median_filter_channels(x, 3))  # the documented default: 3 x 3
    for bad in (2, 4, -1, 2.5, True):  # an even window has no centre pixel: a named error, not a reshape error
        with pytest.raises(DiffusionInputError, match="odd integer"):
            median_filter_channels(x, bad)
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


# -- survivors of the full mutation run of diffusion/model.py (issue 23, benchmarks/RESULTS.md) --

def test_default_config_is_the_bundled_checkpoints_architecture():
    """The bundled checkpoint was trained by ``python -m diffusion.train`` without architecture flags (its
    config.json's ``train_info``): ``ModelConfig()`` is exactly that network, and its weights load strictly into
    the default UNet."""
    import json

    from safetensors.torch import load_file

    from diffusion.model import build_unet

    bundled = json.loads((DATA_DIR / "config.json").read_text())
    assert "--block" not in bundled["train_info"]["command"] and "--size" not in bundled["train_info"]["command"]
    got = {k: v for k, v in ModelConfig().to_dict().items() if k != "train_info"}
    assert got == {k: v for k, v in bundled.items() if k != "train_info"}
    sd = {k: v.float() for k, v in load_file(str(DATA_DIR / "model.safetensors")).items()}
    build_unet(ModelConfig()).load_state_dict(sd, strict=True)


def test_ncc_is_the_pearson_correlation():
    """Registration's score: normalised cross-correlation = Pearson's r (numpy's corrcoef in float64), so it
    ignores offsets and gains of either image."""
    from diffusion.model import _ncc

    g = torch.Generator().manual_seed(0)
    a = 3.0 + torch.randn(2, 9, 11, generator=g)
    b = 0.5 * a - 7.0 + 0.8 * torch.randn(2, 9, 11, generator=g)
    want = np.corrcoef(a.double().flatten().numpy(), b.double().flatten().numpy())[0, 1]
    assert _ncc(a, b) == pytest.approx(want, abs=1e-5)
    assert _ncc(a, -b) == pytest.approx(-want, abs=1e-5)


def test_sobel_scale_and_otsu_bins_are_the_documented_ones():
    """Sobel kernels [1, 2, 1] / 4 x [1, 0, -1]: a unit step gives |gx| = 1 per channel on the two columns at the
    step, so two channels in quadrature give sqrt(2) (hand-computed). Otsu over 256 levels: skimage's
    ``threshold_otsu(nbins=256)`` to rounding."""
    from skimage.filters import threshold_otsu

    from diffusion.model import otsu_threshold, sobel_magnitude

    img = torch.zeros(2, 8, 8)
    img[:, :, 4:] = 1.0
    torch.testing.assert_close(sobel_magnitude(img)[:, 3:5], torch.full((8, 2), math.sqrt(2.0)))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.cat((torch.randn(500, generator=g), 4 + torch.randn(300, generator=g)))
        assert otsu_threshold(v) == pytest.approx(float(threshold_otsu(v.double().numpy(), nbins=256)), abs=1e-9)


def test_boundary_default_thresholds_and_above_means_strictly_above():
    """``boundary_map`` and ``caxis_boundary_map`` default to 5 deg: a 7 deg tilt about a (which also tilts the
    c-axis by 7 deg) is a boundary by default. 'Above' is strict: identical neighbours (misorientation exactly 0)
    are no boundary at a 0 deg threshold."""
    from diffusion.model import caxis_boundary_map

    h = math.radians(7.0) / 2
    q = torch.tensor([1.0, 0, 0, 0]).repeat(3, 3, 1)
    q[1:] = torch.tensor([math.cos(h), math.sin(h), 0.0, 0.0])
    want = torch.zeros(3, 3, dtype=torch.bool)
    want[0] = True
    assert torch.equal(boundary_map(q), want)
    assert torch.equal(caxis_boundary_map(quat_to_channels(q)), want)
    same = torch.tensor([1.0, 0, 0, 0]).repeat(3, 3, 1)
    assert not bool(boundary_map(same, threshold_deg=0.0).any())


def test_consistency_is_rms_residual_over_sigma_in_model_units(tiny, section):
    """Scores (module docstring): RMS residual / sigma of every measurement plus the physics check, summed. Model
    units map PL [0, 1] to [-1, 1], so a PL sigma in intensity units becomes 2 sigma. Recomputed here from the
    samples: the EBSD points (offset scale // 2), the PL channels, and the PL rendered from the sampled EBSD."""
    from diffusion.data import pl_channels

    lr = section[2::4, 2::4]
    pl = _pl(tiny, section, read_noise=0.05, seed=1)
    t0 = time.perf_counter()
    r = tiny.super_resolve(lr, pl, scale=4, n_samples=2, steps=2, seed=0, max_shift=0, max_rotation=0,
                           pl_sigma=0.05, ebsd_sigma=0.02)
    assert 0 < r.seconds <= time.perf_counter() - t0                     # wall time of the call
    x, pm, s_pl = r.samples, 2 * pl - 1, 2 * 0.05

    def rms(d):
        return d.flatten(1).pow(2).mean(1).sqrt()

    want = torch.stack([rms(x[:, :9, 2::4, 2::4] - quat_to_channels(lr)) / 0.02, rms(x[:, 9:] - pm) / s_pl,
                        rms(pl_channels(x[:, :9], tiny.config.pl) - pm) / s_pl], 1)
    torch.testing.assert_close(r.consistency, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(r.scores, want.sum(1), rtol=1e-4, atol=1e-4)
    assert [d["chosen"] for d in r.diagnostics] == [i in r.chosen for i in range(2)]
    assert [d["score"] for d in r.diagnostics] == pytest.approx(r.scores.tolist())
    den = tiny.denoise_pl(pl, n_samples=2, steps=2, pl_sigma=0.05)
    res = tiny.last_result
    torch.testing.assert_close(res.consistency[:, 0], rms(res.samples[:, 9:] - pm) / s_pl, rtol=1e-4, atol=1e-4)
    # the output is the average of the samples (all of them for denoise_pl), back in intensities, within [0, 1]
    assert sorted(res.chosen) == [0, 1] and res.registration == {"dy": 0.0, "dx": 0.0, "angle_deg": 0.0}
    torch.testing.assert_close(den, ((res.samples[:, 9:].mean(0) + 1) / 2).clamp(0, 1))


def test_register_searches_around_its_center_up_to_and_including_the_limit(tiny):
    """The grid is ``center`` + offsets (documented), and points with |shift| or |angle| equal to ``limit`` are
    searched (only larger ones are skipped)."""
    from ebsd.synthetic import synthetic_volume

    q = synthetic_volume((1, 32, 32), mean_grain_size=8.0, symmetry="6/mmm", seed=11).quaternions[0]
    x = make_pair(q, tiny.config.pl)
    rot = warp(x[None, 9:], (0.0, 0.0), math.radians(2.0))[0]
    est = tiny.register(x[:9], rot, max_shift=0.5, max_rotation=0.0, min_gain=0.0,
                        center={"dy": 0.0, "dx": 0.0, "angle_deg": 2.0})
    assert est == {"dy": 0.0, "dx": 0.0, "angle_deg": 2.0}
    sh = warp(x[None, 9:], (1.5, -1.5), 0.0)[0]
    est = tiny.register(x[:9], sh, max_shift=0.5, max_rotation=0.0, min_gain=0.0, limit=(1.5, 0.0),
                        center={"dy": 1.0, "dx": -1.0, "angle_deg": 0.0})
    assert est == {"dy": 1.5, "dx": -1.5, "angle_deg": 0.0}
    est = tiny.register(x[:9], sh, max_shift=0.5, max_rotation=0.0, min_gain=0.0, limit=(1.0, 0.0),
                        center={"dy": 1.0, "dx": -1.0, "angle_deg": 0.0})
    assert est == {"dy": 1.0, "dx": -1.0, "angle_deg": 0.0}           # the truth lies beyond the limit
    # a rotation-only search over +-1 deg (grid -1, 0, 1) finds +-1 deg rotations
    for true in (1.0, -1.0):
        rot = warp(x[None, 9:], (0.0, 0.0), math.radians(true))[0]
        est = tiny.register(x[:9], rot, max_shift=0.0, max_rotation=1.0, min_gain=0.0)
        assert est == {"dy": 0.0, "dx": 0.0, "angle_deg": true}


def test_checkpoint_files_are_checked_and_the_config_is_honoured(tiny, tmp_path):
    """A directory with only one of the two files is no checkpoint (``CheckpointError``); weights missing a
    tensor do not match their config (``CheckpointError``); ``save`` refuses to overwrite either file without
    ``overwrite=True``; ``MultimodalDiffusion(config)`` builds the network that config describes."""
    from safetensors.torch import load_file, save_file

    assert tuple(tiny.unet.config.block_out_channels) == (16, 32) and tiny.unet.config.sample_size == 16
    (tmp_path / "empty").mkdir()
    for where in (tmp_path / "empty", tmp_path / "new" / "deeper"):   # an existing empty folder; missing parents
        assert (tiny.save(where) / "model.safetensors").is_file()
    ck = tiny.save(tmp_path / "ck")
    (ck / "model.safetensors").rename(tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="expected model.safetensors"):
        MultimodalDiffusion.load(ck)                                   # config.json only
    with pytest.raises(FileExistsError):
        tiny.save(ck)                                                  # config.json exists
    sd = load_file(str(tmp_path / "weights.safetensors"))
    sd.pop(sorted(sd)[0])
    save_file(sd, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not match"):
        MultimodalDiffusion.load(ck)                                   # one tensor missing
    (ck / "config.json").unlink()
    with pytest.raises(CheckpointError, match="expected model.safetensors"):
        MultimodalDiffusion.load(ck)                                   # weights only


def test_unconditional_sample_shapes_and_reproducibility(tiny):
    """``sample``: one sample of the model's size by default, an int size is square, (H, W) a rectangle; the same
    seed gives the same samples, the default seed is seed 0."""
    a = tiny.sample(steps=2)
    assert a.shape == (1, 15, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, tiny.sample(steps=2, seed=0)) and not torch.equal(a, tiny.sample(steps=2, seed=1))
    assert tiny.sample(steps=2, size=8).shape == (1, 15, 8, 8)
    assert tiny.sample(n=2, steps=2, size=(8, 12)).shape == (2, 15, 8, 12)


def test_bad_input_shapes_are_named(tiny, section):
    """Wrong PL stacks and quaternion arrays raise ``DiffusionInputError`` before any sampling."""
    from diffusion.errors import DiffusionInputError

    lr, pl = section[2::4, 2::4], _pl(tiny, section)
    for bad_pl in (pl[:5], pl[0]):                       # 5 of 6 polariser angles; one 2-D image
        with pytest.raises(DiffusionInputError, match="pl must have shape"):
            tiny.super_resolve(lr, bad_pl, steps=1, n_samples=1)
    for bad_q in (lr[..., :3], lr.reshape(-1, 4)):       # 3 components; a flat list of quaternions
        with pytest.raises(DiffusionInputError, match="ebsd_low_res must have shape"):
            tiny.super_resolve(bad_q, pl, steps=1, n_samples=1)
    with pytest.raises(DiffusionInputError, match=r"pl is \(12, 16\) but the output grid is \(16, 16\)"):
        tiny.super_resolve(lr, pl[:, :12], steps=1, n_samples=1)
    ch = quat_to_channels(section)
    for steps in (dict(shift_step=0.0), dict(angle_step=0.0)):  # each grid step alone must be > 0
        with pytest.raises(DiffusionInputError, match="must be > 0"):
            tiny.register(ch, 2 * pl - 1, **steps)


def test_median_filter_size_5_and_pl_only_majority_and_uniform_input():
    """A 5 x 5 median against scipy; the caxis criterion's 'at least half of the samples' (one of two samples
    with the boundary: boundary); a uniform section has no boundary by either criterion (pl-edges: Sobel 0
    everywhere is not above the threshold; caxis: identical c-axes, even at a 0 deg threshold)."""
    from scipy.ndimage import median_filter

    from diffusion.data import PLConfig
    from diffusion.model import caxis_boundary_map, median_filter_channels, pl_only_boundaries

    x = torch.randn(2, 3, 12, 11, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(median_filter_channels(x, 5).numpy(),
                               median_filter(x.numpy(), size=(1, 1, 5, 5), mode="nearest"), atol=1e-6)
    np.testing.assert_allclose(median_filter_channels(x[0], 3).numpy(),           # (C, H, W) works as well
                               median_filter(x[0].numpy(), size=(1, 3, 3), mode="nearest"), atol=1e-6)
    q = torch.zeros(8, 8, 4)
    q[..., 0] = 1.0
    uniform = make_pair(q, PLConfig())
    q[:, 4:] = torch.tensor([math.cos(0.6), math.sin(0.6), 0.0, 0.0])
    two = make_pair(q, PLConfig())
    truth = torch.zeros(8, 8, dtype=torch.bool)
    truth[:, 3] = True
    assert torch.equal(pl_only_boundaries(torch.stack([two, uniform]), "caxis", 15.0, 3), truth)
    for crit in ("pl-edges", "caxis"):
        assert not bool(pl_only_boundaries(uniform[None].expand(2, -1, -1, -1), crit, 15.0, 3).any()), crit
    assert not bool(caxis_boundary_map(uniform, 0.0).any())



def test_registered_pl_gives_a_first_estimate_near_no_shift(tiny):
    """Low-resolution pixel (i, j) is output pixel (4 i + 2, 4 j + 2) (docstring); the bicubic upsampling that
    the first registration estimate uses must be aligned to that, so PL rendered from the same section without
    any misregistration is estimated within one 0.5 px grid step of no shift (a mis-aligned upsampling is
    several pixels off and hits the +-2 px search edge)."""
    from ebsd.synthetic import synthetic_volume

    for seed in (3, 11):
        q = synthetic_volume((1, 32, 32), mean_grain_size=8.0, symmetry="6/mmm", seed=seed).quaternions[0]
        r = tiny.super_resolve(q[2::4, 2::4], _pl(tiny, q), scale=4, n_samples=1, steps=1, max_shift=2.0,
                               max_rotation=0.0, refine_registration=False)
        reg = r.registration_initial
        assert abs(reg["dy"]) <= 0.5 and abs(reg["dx"]) <= 0.5, (seed, reg)
        assert r.registration == reg                        # no refinement asked for: the first estimate is used
        # refinement only re-estimates shifts, and only with max_shift > 0: a rotation-only search keeps its estimate
        r = tiny.super_resolve(q[2::4, 2::4], warp(_pl(tiny, q)[None], (0.0, 0.0), math.radians(2.0))[0], scale=4,
                               n_samples=1, steps=1, max_shift=0.0, max_rotation=2.0)
        assert r.registration == r.registration_initial and r.registration_initial["angle_deg"] != 0.0


def test_grain_boundaries_with_ebsd_is_the_majority_of_the_chosen_samples(tiny, section, monkeypatch):
    """With low-resolution EBSD: a pixel is a boundary when it is one (``boundary_map``, 5 deg) in at least half
    of the chosen samples (threshold 5 deg by default). The sampler is replaced by two hand-built chosen samples (two
    grains 7 deg apart, and a uniform section) and a third, not chosen, with a boundary elsewhere: the 7 deg boundary
    is kept (1 of 2 chosen samples), the unchosen sample's is not."""
    from diffusion.data import PLConfig
    from diffusion.model import EnhanceResult

    q = torch.zeros(8, 8, 4)
    q[..., 0] = 1.0
    uniform = make_pair(q, PLConfig())
    q[:, 4:] = torch.tensor([math.cos(math.radians(3.5)), math.sin(math.radians(3.5)), 0.0, 0.0])  # 7 deg
    two = make_pair(q, PLConfig())
    q = torch.zeros(8, 8, 4)
    q[..., 0] = 1.0
    q[6:] = torch.tensor([math.cos(0.6), math.sin(0.6), 0.0, 0.0])
    other = make_pair(q, PLConfig())
    x = torch.stack([two, other, uniform])

    def fake(*args, **kw):
        return EnhanceResult(None, None, x, torch.tensor([0.0, 9.0, 1.0]), torch.zeros(3, 1), [0, 2], {}, 0.0)

    monkeypatch.setattr(tiny, "super_resolve", fake)
    b = tiny.grain_boundaries(_pl(tiny, section)[:, :8, :8], ebsd_low_res=section[2:8:4, 2:8:4])
    truth = torch.zeros(8, 8, dtype=torch.bool)
    truth[:, 3] = True
    assert torch.equal(b, truth)


def test_snap_to_lowres_candidates_radius_pl_and_an_uneven_grid():
    """Candidates are the (2 radius + 1)^2 nearest coarse measurements (radius 1 by default): a pixel whose
    channels equal a measurement two coarse cells away gets the nearer of the two in reach (distances worked out
    here). With ``pl`` the rendered PL decides between candidates the channels cannot tell apart, at any
    ``pl_weight > 0``. An output grid that is not a multiple of ``scale`` takes the last measurements' candidates."""
    from diffusion.data import PLConfig, pl_channels
    from diffusion.model import snap_to_lowres

    A = torch.tensor([1.0, 0.0, 0.0, 0.0])
    Bq = torch.tensor([math.cos(0.3), math.sin(0.3), 0.0, 0.0])
    Cq = torch.tensor([math.cos(0.6), math.sin(0.6), 0.0, 0.0])
    lr = torch.stack([A, Bq, Cq])[None]                                  # (1, 3, 4): one row of three
    e = quat_to_channels(lr)[:, 0]                                       # (9, 3)
    ch = e[:, 2:3, None].expand(9, 2, 6).clone()                         # every pixel looks like C
    out = snap_to_lowres(ch, lr, 2)
    nearer = Bq if (e[:, 1] - e[:, 2]).pow(2).sum() < (e[:, 0] - e[:, 2]).pow(2).sum() else A
    assert torch.equal(out[:, :2], nearer.expand(2, 2, 4))               # C is out of reach of column 0
    assert torch.equal(out[:, 2:], Cq.expand(2, 4, 4))
    # PL decides: channels halfway between A and C; observed PL is A's left, C's right
    lr2 = torch.stack([A, Cq])[None]                                     # (1, 2, 4)
    e2 = quat_to_channels(lr2)[:, 0]
    mid = ((e2[:, 0] + e2[:, 1]) / 2)[:, None, None].expand(9, 4, 16).clone()
    P = pl_channels(e2[None, :, None, :], PLConfig(), blur=False)[0, :, 0, :]      # (n_angles, 2)
    obs = torch.cat([P[:, :1, None].expand(-1, 4, 8), P[:, 1:, None].expand(-1, 4, 8)], 2)
    out = snap_to_lowres(mid, lr2, 8, pl=obs, pl_weight=1.0)
    assert torch.equal(out[:, :4], A.expand(4, 4, 4)) and torch.equal(out[:, 12:], Cq.expand(4, 4, 4))
    # 10 x 10 output from 3 x 3 measurements at scale 3: rows/columns 9 replicate the last block's candidates
    g = torch.Generator().manual_seed(0)
    q3 = torch.nn.functional.normalize(torch.randn(3, 3, 4, generator=g), dim=-1)
    full = quat_to_channels(q3).repeat_interleave(3, -2).repeat_interleave(3, -1)
    full = torch.nn.functional.pad(full[None], (0, 1, 0, 1), mode="replicate")[0]
    out = snap_to_lowres(full, q3, 3)
    assert out.shape == (10, 10, 4)
    assert torch.equal(out[9], out[8]) and torch.equal(out[:, 9], out[:, 8])


def _c_axis_quat(v):
    """A unit quaternion (w, x, y, z) turning the crystal c-axis (z) onto the unit vector ``v``."""
    v = torch.nn.functional.normalize(torch.tensor(v, dtype=torch.float64), dim=0)
    axis = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), v)
    ang = math.acos(max(-1.0, min(1.0, float(v[2]))))
    if float(axis.norm()) < 1e-12:
        return torch.tensor([1.0, 0.0, 0.0, 0.0])
    axis = axis / axis.norm()
    return torch.cat([torch.tensor([math.cos(ang / 2)], dtype=torch.float64), math.sin(ang / 2) * axis]).float()


def test_caxis_boundaries_in_plane_tilt_and_mirror_hand_built():
    """``caxis_boundary_map`` compares headless c-axes modulo the mirror cz -> -cz: in-plane c-axes 30 deg apart
    (about x, and about y) are a boundary at 15 deg, c-axes mirrored in z are none; a horizontal boundary marks
    the row above it only."""
    from diffusion.model import caxis_boundary_map, pl_only_boundaries

    def section(top, bottom):
        q = _c_axis_quat(top).repeat(6, 5, 1)
        q[3:] = _c_axis_quat(bottom)
        return quat_to_channels(q)

    want = torch.zeros(6, 5, dtype=torch.bool)
    want[2] = True
    c30, s30 = math.cos(math.radians(30)), math.sin(math.radians(30))
    s20, c20 = math.sin(math.radians(20)), math.cos(math.radians(20))
    for top, bottom, boundary in [((1, 0, 0), (c30, s30, 0), True), ((0, 1, 0), (s30, c30, 0), True),
                                  ((s20, 0, c20), (s20, 0, -c20), False), ((0, s20, c20), (0, s20, -c20), False)]:
        got = caxis_boundary_map(section(top, bottom), 15.0)
        assert torch.equal(got, want if boundary else torch.zeros_like(want)), (top, bottom)
    # grain_boundaries without EBSD, criterion caxis: the threshold defaults to 15 deg (20 deg apart: boundary)
    x = torch.cat([section((0, 0, 1), (s20, 0, c20)), torch.zeros(6, 6, 5)])[None].expand(2, -1, -1, -1)
    assert torch.equal(pl_only_boundaries(x, "caxis", 15.0, 1), want)
    # pl-edges: the posterior-mean PL *stack*; in-plane c-axes 45 deg apart have the same mean over the polariser
    # angles, so only the per-angle images show the boundary (columns 3 and 4 either side of it)
    from diffusion.data import PLConfig

    q = _c_axis_quat((1, 0, 0)).repeat(8, 8, 1)
    q[:, 4:] = _c_axis_quat((math.cos(math.radians(45)), math.sin(math.radians(45)), 0))
    edges = pl_only_boundaries(make_pair(q, PLConfig())[None].expand(2, -1, -1, -1), "pl-edges")
    assert bool(edges[:, 3:5].all()) and not bool(edges[:, :2].any()) and not bool(edges[:, 6:].any())


def test_grain_boundaries_without_ebsd_caxis_default_threshold_15_deg(tiny, monkeypatch):
    """Docstring: the caxis criterion's threshold defaults to 15 deg. The samples of ``denoise_pl`` are replaced by
    hand-built ones whose c-axes differ by 20 deg across one row: a boundary there."""
    from diffusion.model import EnhanceResult

    s20, c20 = math.sin(math.radians(20)), math.cos(math.radians(20))
    q = _c_axis_quat((0, 0, 1)).repeat(6, 5, 1)
    q[3:] = _c_axis_quat((s20, 0, c20))
    x = torch.cat([quat_to_channels(q), torch.zeros(6, 6, 5)])[None].expand(2, -1, -1, -1).clone()

    def fake(*args, **kw):
        tiny.last_result = EnhanceResult(None, None, x, torch.zeros(2), torch.zeros(2, 1), [0, 1], {}, 0.0)

    monkeypatch.setattr(tiny, "denoise_pl", fake)
    want = torch.zeros(6, 5, dtype=torch.bool)
    want[2] = True
    assert torch.equal(tiny.grain_boundaries(torch.zeros(6, 6, 5), criterion="caxis", median=1), want)


def test_combine_samples_mean_of_the_better_half():
    """``combine="mean"``: the channel-space mean of the better half (lower score) of the samples, at least one;
    ``"best"``: the lowest score. Hand-made samples with constant values 0..n-1."""
    from diffusion.model import combine_samples

    for n, scores, want in [(4, [3.0, 0.5, 2.0, 1.0], [1, 3]), (2, [2.0, 1.0], [1]), (1, [5.0], [0]),
                            (5, [4.0, 3.0, 2.0, 1.0, 0.0], [4, 3, 2])]:
        x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, 3, 3)
        est, chosen = combine_samples(x, torch.tensor(scores), "mean")
        assert chosen == want, (n, chosen)
        torch.testing.assert_close(est, torch.full((2, 3, 3), float(np.mean(want))))
        est, chosen = combine_samples(x, torch.tensor(scores), "best")
        assert chosen == [int(np.argmin(scores))]


def test_projection_pl_undoes_the_estimated_misregistration(tiny):
    """``projection_pl`` is the observed PL mapped back onto the EBSD grid with the estimate (the warp
    inverted: shifts and angle negated), so it is closer to the PL that the section itself renders than the
    observed, misregistered PL is (RMS inside a 4 px border; measured 0.13 vs 0.37 for the shift, 0.05 vs 0.09
    and 0.07 vs 0.12 for the rotation; undoing with a wrong sign gives 0.49-0.52 and 0.16-0.21)."""
    from diffusion.data import pl_to_model
    from ebsd.synthetic import synthetic_volume

    for seed, shift, angle in [(3, (1.5, -1.0), 0.0), (11, (0.0, 0.0), 3.0), (3, (0.0, 0.0), 3.0)]:
        q = synthetic_volume((1, 32, 32), mean_grain_size=8.0, symmetry="6/mmm", seed=seed).quaternions[0]
        pl = _pl(tiny, q)
        obs = warp(pl[None], shift, math.radians(angle))[0]
        r = tiny.super_resolve(q[2::4, 2::4], obs, scale=4, n_samples=1, steps=1, max_shift=2.0 if angle == 0 else 0.0,
                               max_rotation=3.0 if angle else 0.0, refine_registration=False)
        truth = pl_to_model(pl)

        def err(a):
            return float((a - truth)[..., 4:-4, 4:-4].pow(2).mean().sqrt())

        assert err(r.projection_pl) < 0.7 * err(pl_to_model(obs)), (seed, shift, angle, r.registration)


def test_super_resolve_projects_onto_the_measured_orientations_by_default(tiny, section):
    """Module docstring: super-resolution projects (``project=True`` by default), so every output orientation is
    one of the measured low-resolution ones; ``project=False`` returns the decoded samples, which are not."""
    from ebsd.orientation import misorientation_angle

    lr, pl = section[2::4, 2::4], _pl(tiny, section)
    kw = dict(n_samples=1, steps=1, max_shift=0, max_rotation=0)
    for project, measured in ((None, True), (False, False)):
        r = tiny.super_resolve(lr, pl, **kw) if project is None else tiny.super_resolve(lr, pl, project=project, **kw)
        d = misorientation_angle(r.quaternions[:, :, None, None], lr[None, None], "6/mmm").flatten(2).amin(-1)
        assert bool((d < 1e-3).all()) == measured
