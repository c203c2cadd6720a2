"""llmeff.tp codecs in one process (no communication: reduce = encode + decode of the local payload)."""
from __future__ import annotations

import pytest
import torch

from llmeff.errors import LLMEffValueError
from llmeff.tp import make_codec


def _acts(N=64, D=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    x[:, [3, 100, 201, 250]] *= 50.0           # outlier features
    return x


def _calibrated(name, **kw):
    c = make_codec(name, **kw)
    if c.needs_calibration:
        c.observe(_acts(seed=1))
        c.finalize()
    return c


def test_bits_per_value_accounting():
    x = _acts()
    D = x.shape[1]
    expect = {"fp32": 32.0, "bf16": 16.0, "int8": 8 + 16 / D, "int4": 4 + 16 / D,
              "ours": ((D - 4) * 4 + 4 * 16) / D}
    for name, bits in expect.items():
        c = _calibrated(name)
        c.reduce(x)
        assert abs(c.stats.bits_per_value - bits) < 1e-9, name
    c = _calibrated("ours", group_size=63)
    c.reduce(x)
    assert abs(c.stats.bits_per_value - ((D - 4) * 4 + 4 * 16 + 4 * 16) / D) < 1e-9     # 252/63 = 4 groups


def test_outliers_are_the_largest_range_features():
    c = _calibrated("ours")
    assert c.outliers.tolist() == [3, 100, 201, 250]


@pytest.mark.parametrize("gs", [None, 32])
def test_ours_error_vs_naive(gs):
    x = _acts(seed=2)
    err = {}
    for name in ("int8", "int4", "ours"):
        c = _calibrated(name, **({"group_size": gs} if name == "ours" else {}))
        err[name] = ((c.reduce(x) - x).norm() / x.norm()).item()
    # outliers kept exact(ish) in bf16; inliers quantized over their own range, not the outliers' range
    assert err["ours"] < 0.2 * err["int4"]


def test_ours_outlier_features_nearly_exact():
    x = _acts(seed=3)
    c = _calibrated("ours")
    y = c.reduce(x)
    torch.testing.assert_close(y[:, c.outliers], x[:, c.outliers].bfloat16().float())


def test_uncalibrated_and_bad_names():
    with pytest.raises(LLMEffValueError, match="calibrat"):
        make_codec("ours").reduce(torch.zeros(2, 8))
    with pytest.raises(LLMEffValueError, match="unknown codec"):
        make_codec("int3")
    with pytest.raises(LLMEffValueError, match="outlier_frac"):
        make_codec("ours", outlier_frac=1.5)


# -- absolute error bounds derived from the bit widths (independent of how the other codecs fare) ----------------

@pytest.mark.parametrize("bits", [4, 8])
def test_naive_int_error_within_half_a_step_of_its_bit_width(bits):
    """Symmetric absmax int-b per token: the step is ``absmax / (2**(b-1) - 1)``; round-to-nearest is off by at most
    half a step (times 1 + 2**-7 for the bf16-stored scale). A codec that wastes a bit (qmax = 2**(b-2) - 1) has
    twice the step and breaks the bound."""
    x = _acts(N=64, D=256, seed=4)
    x[7] *= 1e-3                                 # rows of very different magnitude: the scale is per token
    c = make_codec(f"int{bits}")
    y = c.reduce(x)
    absmax = x.abs().amax(1, keepdim=True)
    step = absmax / (2 ** (bits - 1) - 1)
    err = (y - x).abs()
    assert bool((err <= 0.5 * step * (1 + 2 ** -7) + 1e-7).all()), float((err / step).max())
    # ... and the bound is tight: the codec really uses that step (not a finer one that is never reached)
    assert float((err / step).amax()) > 0.45
    # the extreme value of each row is reproduced to the bf16 scale's precision
    i = x.abs().argmax(1)
    r = torch.arange(x.shape[0])
    torch.testing.assert_close(y[r, i], x[r, i], rtol=2 ** -7, atol=0)


@pytest.mark.parametrize("bits", [4, 8])
def test_naive_int_sum_of_two_payloads_within_the_sum_of_bounds(bits):
    """decode_sum of two ranks' payloads (each with its own scales) is the sum within the two half-steps."""
    c = make_codec(f"int{bits}")
    a, b = _acts(seed=5), 3.0 * _acts(seed=6)
    p = torch.stack([c.encode(a), c.encode(b)])
    y = c.decode_sum(p, a.shape[1])
    q = 2 ** (bits - 1) - 1
    bound = 0.5 * (a.abs().amax(1, keepdim=True) + b.abs().amax(1, keepdim=True)) / q * (1 + 2 ** -7)
    assert bool(((y - (a + b)).abs() <= bound + 1e-6).all())


def test_ours_inlier_error_within_half_a_calibrated_int4_step():
    """clip=1: every inlier feature is quantised over its calibrated range [lo, hi] in 15 steps; values inside the
    range are off by at most half a step; outlier features by the bf16 rounding (2**-9 relative)."""
    calib = _acts(N=256, seed=7)
    c = make_codec("ours", clip=1.0)
    c.observe(calib)
    c.finalize()
    x = calib[::3]                               # inside the calibrated ranges by construction
    y = c.reduce(x)
    inl, out = c.inliers, c.outliers
    lo, hi = calib.amin(0), calib.amax(0)
    step = (hi - lo)[inl] / 15.0
    err = (y[:, inl] - x[:, inl]).abs()
    assert bool((err <= 0.5 * step * (1 + 1e-5) + 1e-6).all()), float((err / step).max())
    assert float((err / step).amax()) > 0.4
    assert bool(((y[:, out] - x[:, out]).abs() <= x[:, out].abs() * 2 ** -8).all())
