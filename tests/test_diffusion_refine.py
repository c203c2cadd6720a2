"""Registration refinement of ``MultimodalDiffusion.super_resolve`` (``refine_registration``): the refined
estimate (0.25 px local shift grid, sharp prediction from the posterior mean snapped to the measured
orientations) is used by the projection only, the first estimate stays visible, and ``refine_registration=False`` is the previous
behaviour. The sampler is replaced by an oracle (the true EBSD + PL pair) or a garbage one where the test is
about the registration logic, not about the network."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")

import diffusion.model as dm  # noqa: E402
from diffusion import MultimodalDiffusion  # noqa: E402
from diffusion.data import make_pair, pl_to_model, quat_to_channels  # noqa: E402
from diffusion.model import ModelConfig, snap_to_lowres  # noqa: E402
from diffusion.operators import warp  # noqa: E402
from diffusion.pl import pl_images  # noqa: E402

KEYS = {"dy", "dx", "angle_deg"}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MultimodalDiffusion(ModelConfig.tiny())


@pytest.fixture(scope="module")
def section64():
    from ebsd.synthetic import synthetic_volume

    return synthetic_volume((1, 64, 64), mean_grain_size=10.0, symmetry="6/mmm", seed=5).quaternions[0]


def _observed(model, q, shift, angle_deg, noise=0.0, seed=0):
    c = model.config.pl
    clean = pl_images(q, angles=c.angles, analyser=c.analyser, blur_sigma=c.blur_sigma)
    pl = warp(clean[None], shift, math.radians(angle_deg))[0]
    if noise:
        pl = pl + noise * torch.randn(pl.shape, generator=torch.Generator().manual_seed(seed))
    return pl.clamp(0, 1)


def _mis(q, truth):
    from ebsd.orientation import misorientation_angle

    return float(misorientation_angle(torch.as_tensor(q), truth, "6/mmm").rad2deg().mean())


def _old_projection(model, res, lr, pl, scale=4):
    """The projection as it was before refinement existed: snap with the PL un-warped by the first estimate."""
    reg, pm = res.registration_initial, pl_to_model(pl)
    obs = warp(pm[None], (-reg["dy"], -reg["dx"]), -math.radians(reg["angle_deg"]))[0] if any(reg.values()) else pm
    return snap_to_lowres(res.samples.mean(0), lr, scale, pl=obs, pl_config=model.config.pl)


def test_refine_off_is_previous_behaviour_and_on_keeps_samples(tiny, section64):
    q = section64[:32, :32]
    lr, pl = q[2::4, 2::4], _observed(tiny, q, (1.0, -0.5), 0.0, noise=0.02)
    kw = dict(n_samples=2, steps=3, seed=4)
    off = tiny.super_resolve(lr, pl, refine_registration=False, **kw)
    on = tiny.super_resolve(lr, pl, refine_registration=True, **kw)
    assert set(off.registration) == KEYS and off.registration == off.registration_initial
    torch.testing.assert_close(off.quaternions, _old_projection(tiny, off, lr, pl), rtol=0, atol=0)
    # refinement re-uses the samples (no re-sampling) and the same first estimate
    assert torch.equal(on.samples, off.samples) and torch.equal(on.scores, off.scores)
    assert on.registration_initial == off.registration_initial and set(on.registration) == KEYS
    assert on.quaternions.shape == off.quaternions.shape == (32, 32, 4)
    # the projection used the estimate reported in res.registration
    reg = on.registration
    exp = warp(pl_to_model(pl)[None], (-reg["dy"], -reg["dx"]), -math.radians(reg["angle_deg"]))[0] \
        if any(reg.values()) else pl_to_model(pl)
    torch.testing.assert_close(on.projection_pl, exp, rtol=0, atol=0)
    # numpy in -> numpy out, registration disabled -> nothing to refine
    r0 = tiny.super_resolve(lr.numpy(), pl.numpy(), max_shift=0, max_rotation=0, **kw)
    assert r0.registration == r0.registration_initial == {"dy": 0.0, "dx": 0.0, "angle_deg": 0.0}
    assert r0.quaternions.shape == (32, 32, 4) and not isinstance(r0.quaternions, torch.Tensor)


def test_refinement_resolves_sub_step_misregistration(tiny, section64, monkeypatch):
    """Oracle posterior (the true pair): the coarse first estimate (0.5 px grid) cannot hit a quarter-pixel
    shift; the refinement (0.25 px) finds it exactly and the projection improves."""
    q = section64
    truth = make_pair(q, tiny.config.pl)
    monkeypatch.setattr(dm, "sample", lambda unet, ac, shape, *a, **k: truth[None].expand(shape[0], -1, -1, -1).clone())
    true = {"dy": 0.75, "dx": -0.25, "angle_deg": 1.0}
    pl = _observed(tiny, q, (true["dy"], true["dx"]), true["angle_deg"], noise=0.02)
    lr = q[2::4, 2::4]
    off = tiny.super_resolve(lr, pl, n_samples=2, refine_registration=False)
    on = tiny.super_resolve(lr, pl, n_samples=2, refine_registration=True)
    assert on.registration_initial == off.registration != true          # coarse grid: off by a sub-step
    assert on.registration == pytest.approx(true, abs=1e-9)
    # the refined shift stays within one coarse step of the first one; the rotation is not refined
    init = on.registration_initial
    assert abs(on.registration["dy"] - init["dy"]) <= 0.5 and abs(on.registration["dx"] - init["dx"]) <= 0.5
    assert on.registration["angle_deg"] == init["angle_deg"]
    m_off, m_on = _mis(off.quaternions, q), _mis(on.quaternions, q)
    assert m_on < m_off - 0.05, (m_on, m_off)


def test_refinement_rejected_when_posterior_is_poor(tiny, section64, monkeypatch):
    """A posterior mean that predicts the observed PL worse than the bicubic EBSD (here: constant channels)
    must not override the first estimate."""
    q = section64[:32, :32]
    monkeypatch.setattr(dm, "sample", lambda unet, ac, shape, *a, **k: torch.zeros(shape))
    pl = _observed(tiny, q, (1.5, -1.0), 0.0)
    lr = q[2::4, 2::4]
    res = tiny.super_resolve(lr, pl, n_samples=2)
    assert res.registration == res.registration_initial
    # without the check, the local search on that prediction would have moved the estimate
    sharp = quat_to_channels(snap_to_lowres(res.samples.mean(0), lr, 4))
    ungated = tiny.register(sharp, pl_to_model(pl), 0.5, 0.0, shift_step=0.25, center=res.registration_initial,
                            limit=(2.0, 2.0))
    assert ungated != res.registration_initial


def test_register_local_grid_and_limit(tiny, section64):
    q = section64[:32, :32]
    x = make_pair(q, tiny.config.pl)
    pm = pl_to_model(_observed(tiny, q, (0.75, 0.25), 0.0))
    c = {"dy": 0.5, "dx": 0.5, "angle_deg": 0.0}
    est = tiny.register(x[:9], pm, 0.5, 0.0, shift_step=0.25, center=c, min_gain=0.0)
    assert est == {"dy": 0.75, "dx": 0.25, "angle_deg": 0.0}
    # limit: |dy|, |dx| <= 0.5 -> the best grid point inside the limit
    est = tiny.register(x[:9], pm, 0.5, 0.0, shift_step=0.25, center=c, min_gain=0.0, limit=(0.5, 2.0))
    assert abs(est["dy"]) <= 0.5 and abs(est["dx"]) <= 0.5 and est["dy"] == 0.5
    from diffusion import DiffusionInputError

    with pytest.raises(DiffusionInputError, match="shift_step"):
        tiny.register(x[:9], pm, shift_step=0.0)
    with pytest.raises(DiffusionInputError, match="center"):
        tiny.register(x[:9], pm, center={"dy": 0.5})
