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
