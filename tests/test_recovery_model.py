"""The slice-recovery transformer: shapes, masking, symmetry handling of inputs and loss, checkpoints."""
from __future__ import annotations

import torch
import pytest

from ebsd.errors import EBSDValueError
from ebsd.orientation import get_symmetry, quat_multiply
from ebsd.recovery import ModelConfig, SliceRecoveryTransformer, load_model
from ebsd.recovery.model import prepare_input, symmetric_quaternion_loss

from _recovery_helpers import tiny_model


def _rand_q(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape, 4, generator=g)
    return q / q.norm(dim=-1, keepdim=True)


def test_shapes_and_unit_output():
    net = tiny_model()
    x = torch.rand(2, 7, 12, 10, 3) * 2 - 1
    mask = torch.zeros(2, 7, 12, 10, dtype=torch.bool)
    mask[:, 3] = True
    with torch.no_grad():
        out = net(x, mask)
    assert out.shape == (2, 7, 12, 10, 4)
    assert torch.allclose(out.norm(dim=-1), torch.ones(()), atol=1e-5)


def test_keep_z_matches_full_output():
    net = tiny_model()
    x = torch.rand(2, 7, 12, 10, 3) * 2 - 1
    mask = torch.zeros(2, 7, 12, 10, dtype=torch.bool)
    mask[:, 3:5] = True
    with torch.no_grad():
        full, part = net(x, mask), net(x, mask, keep_z=slice(3, 5))
    assert part.shape == (2, 2, 12, 10, 4)
    assert torch.allclose(full[:, 3:5], part, atol=1e-5)


def test_default_size_is_lightweight():
    n = SliceRecoveryTransformer(ModelConfig()).n_parameters
    assert 300_000 <= n <= 3_000_000, n


def test_window_larger_than_model_raises():
    net = tiny_model()
    with pytest.raises(ValueError, match="exceeds"):
        net(torch.zeros(1, 17, 4, 4, 3), torch.zeros(1, 17, 4, 4, dtype=torch.bool))


def test_masked_content_never_reaches_the_network():
    net = tiny_model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 7, 16, 16, 3, generator=g) * 2 - 1
    mask = torch.zeros(1, 7, 16, 16, dtype=torch.bool)
    mask[:, 3] = True
    mask[:, 5, 2:6, 3:9] = True  # unindexed voxels in a visible slice
    x2 = x.clone()
    x2[mask] = torch.rand(int(mask.sum()), 3, generator=g) * 2 - 1
    with torch.no_grad():
        a, b = net(x, mask), net(x2, mask)
    assert torch.equal(a, b)
    # ... while the content of visible voxels does matter
    x3 = x.clone()
    x3[:, 2] = -x3[:, 2]
    with torch.no_grad():
        c = net(x3, mask)
    assert not torch.allclose(a[~mask], c[~mask])


def test_input_is_symmetry_invariant_and_bounded():
    q = _rand_q(200)
    ops = get_symmetry("m-3m").operators.to(q)
    s = ops[torch.randint(len(ops), (200,), generator=torch.Generator().manual_seed(3))]
    q2 = quat_multiply(s, q) * torch.where(torch.rand(200, 1) < 0.5, -1.0, 1.0)
    a, b = prepare_input(q, "m-3m"), prepare_input(q2, "m-3m")
    assert a.shape == (200, 3)
    assert (a - b).abs().max() < 1e-4
    assert a.abs().max() <= 1.0 + 1e-5


def test_loss_is_symmetry_aware():
    q = _rand_q(64, seed=4)
    ops = get_symmetry("m-3m").operators.to(q)
    eq = quat_multiply(ops[7], q)
    assert symmetric_quaternion_loss(q, eq, "m-3m") < 1e-6
    assert symmetric_quaternion_loss(q, -q, "m-3m") < 1e-6
    other = _rand_q(64, seed=5)
    assert symmetric_quaternion_loss(q, other, "m-3m") > 1e-3
    w = torch.zeros(64)
    w[:3] = 1
    assert torch.isclose(symmetric_quaternion_loss(q, other, "m-3m", w),
                         symmetric_quaternion_loss(q[:3], other[:3], "m-3m"))


def test_save_load_roundtrip(tmp_path):
    net = tiny_model()
    net.save(tmp_path / "ck", extra={"inference": {"tile": 16}})
    back = load_model(tmp_path / "ck")
    back2 = load_model(tmp_path / "ck" / "model.safetensors")
    assert back.config == net.config
    x = torch.rand(1, 5, 8, 8, 3)
    m = torch.zeros(1, 5, 8, 8, dtype=torch.bool)
    m[:, 2] = True
    with torch.no_grad():
        assert torch.equal(net(x, m), back(x, m))
        assert torch.equal(net(x, m), back2(x, m))


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(EBSDValueError, match="train_recovery"):
        load_model(tmp_path / "nothing")
