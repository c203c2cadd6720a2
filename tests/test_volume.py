"""EBSDVolume: validation, conversions at the edge, copies."""
import numpy as np
import pytest
import torch

from ebsd import EBSDValueError, EBSDVolume, Phase


def _q(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape, 4, generator=g)
    return q / q.norm(dim=-1, keepdim=True)


def test_defaults_and_numpy_input():
    q = _q((2, 3, 4)).numpy()
    v = EBSDVolume(q, spacing=(2, 0.5, 0.5))
    assert v.shape == (2, 3, 4)
    assert v.quaternions.dtype == torch.float32 and isinstance(v.quaternions, torch.Tensor)
    assert v.phases.dtype == torch.int32 and v.valid.all() and v.fraction_indexed == 1.0
    assert v.spacing == (2.0, 0.5, 0.5) and v.symmetry == "m-3m"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(quaternions=np.zeros((2, 3, 4))), "shape"),
        (dict(quaternions=np.ones((1, 2, 2, 4))), "not unit"),
        (dict(quaternions=np.full((1, 1, 1, 4), np.nan)), "NaN"),
        (dict(quaternions=np.tile([1.0, 0, 0, 0], (1, 2, 2, 1)), spacing=(1, -1, 1)), "spacing"),
        (dict(quaternions=np.tile([1.0, 0, 0, 0], (1, 2, 2, 1)), confidence=np.ones((1, 2, 3))), "confidence"),
        (dict(quaternions=[1, 0, 0, 0]), "numpy array or torch tensor"),
    ],
)
def test_bad_input_raises_named_error(kwargs, match):
    with pytest.raises(EBSDValueError, match=match):
        EBSDVolume(**kwargs)


def test_copy_slices_equals_and_symmetry_majority():
    q = _q((4, 3, 3), seed=1)
    phases = torch.ones(4, 3, 3, dtype=torch.int32)
    phases[:, :, 1:] = 2
    v = EBSDVolume(q, phases=phases, phase_info={1: Phase("Ni", "m-3m"), 2: Phase("Ti", "6/mmm")}, spacing=(3, 1, 1))
    assert v.symmetry == "6/mmm"  # phase 2 covers 6 of 9 voxels per slice
    c = v.copy()
    c.quaternions[0, 0, 0] = -c.quaternions[0, 0, 0]  # q and -q: the same orientation
    assert v.equals(c)
    c.confidence[0, 0, 0] = 0.5
    assert not v.equals(c)
    s = v.slices(1, 3)
    assert s.shape == (2, 3, 3) and s.origin[0] == 3.0
    torch.testing.assert_close(s.quaternions, v.quaternions[1:3])
    with pytest.raises(EBSDValueError):
        v.slices(3, 9)


def test_to_always_copies():
    v = EBSDVolume(_q((2, 3, 3), seed=4))
    w = v.to("cpu")
    w.confidence[0, 0, 0] = 0.25
    w.quaternions[0, 0, 0] = torch.tensor([1.0, 0, 0, 0])
    assert float(v.confidence[0, 0, 0]) == 1.0 and not torch.equal(v.quaternions[0, 0, 0], w.quaternions[0, 0, 0])


def _two_phase(seed=2):
    q = _q((3, 4, 5), seed=seed)
    phases = torch.ones(3, 4, 5, dtype=torch.int32)
    phases[:, :, 3:] = 2
    g = torch.Generator().manual_seed(seed)
    return EBSDVolume(q, phases=phases, phase_info={1: Phase("Ni", "m-3m"), 2: Phase("Ti", "6/mmm")},
                      confidence=torch.rand(3, 4, 5, generator=g), image_quality=100 * torch.rand(3, 4, 5, generator=g))


@pytest.mark.parametrize("field", ["quaternion", "phase", "confidence", "image_quality", "valid", "spacing",
                                   "measured", "symmetry"])
def test_equals_rejects_one_differing_voxel(field):
    """Round-trip tests rely on equals: it must notice a single voxel that differs in any one field."""
    v = _two_phase()
    c = v.copy()
    assert v.equals(c) and c.equals(v)
    if field == "quaternion":
        # 2 deg about x of one voxel: far beyond float rounding, far below 'a different grain'
        h = np.radians(2.0) / 2
        r = torch.tensor([np.cos(h), np.sin(h), 0.0, 0.0], dtype=torch.float32)
        a = c.quaternions[1, 2, 3]
        w = r[0] * a[0] - (r[1:] * a[1:]).sum()
        xyz = r[0] * a[1:] + a[0] * r[1:] + torch.linalg.cross(r[1:], a[1:])
        c.quaternions[1, 2, 3] = torch.cat([w.view(1), xyz])
        assert v.equals(c, atol=0.05) and not v.equals(c, atol=1e-3)
    elif field == "phase":
        c.phases[2, 0, 0] = 2
    elif field == "confidence":
        c.confidence[0, 3, 4] += 0.01
    elif field == "image_quality":
        c.image_quality[1, 1, 1] += 1.0
    elif field == "valid":
        c.valid[0, 0, 0] = False
    elif field == "spacing":
        c = EBSDVolume(v.quaternions, phases=v.phases, phase_info=v.phase_info, confidence=v.confidence,
                       image_quality=v.image_quality, spacing=(1.0, 1.0, 1.5))
    elif field == "measured":
        c.measured[0, 1, 1] = False
    elif field == "symmetry":  # same voxels, one phase declared with another Laue class
        pid = max(c.phase_info)
        c.phase_info[pid] = Phase(c.phase_info[pid].name, "4/mmm" if c.phase_info[pid].symmetry != "4/mmm" else "mmm",
                                  c.phase_info[pid].lattice)
    assert not v.equals(c) and not c.equals(v), field
