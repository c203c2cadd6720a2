"""The ``measured`` flag of :class:`ebsd.EBSDVolume`: default, checks, copies, slicing, equality."""
import torch

from ebsd import EBSDVolume


def _vol(**kw):
    q = torch.zeros(2, 3, 4, 4)
    q[..., 0] = 1
    return EBSDVolume(quaternions=q, **kw)


def test_measured_defaults_true_and_survives_copies():
    v = _vol()
    assert v.measured.dtype == torch.bool and bool(v.measured.all())
    m = torch.ones(2, 3, 4, dtype=torch.bool)
    m[1, 2, 3] = False
    valid = m.clone()
    w = _vol(measured=m, valid=valid)
    assert not bool(w.copy().measured[1, 2, 3])
    assert not bool(w.to("cpu").measured[1, 2, 3])
    assert w.slices(1, 2).measured.shape == (1, 3, 4) and not bool(w.slices(1, 2).measured[0, 2, 3])
    assert not w.equals(_vol(valid=valid))  # differs only in measured
    assert w.equals(w.copy())
