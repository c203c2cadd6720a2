"""save_volume's choice of format from the path (issue 24): unknown extensions are refused with the list of
writable formats; a folder of .ang slices only for a path ending in '/', an existing folder or a bare name."""
from __future__ import annotations

import numpy as np
import pytest

from ebsd import EBSDValueError, load_volume, save_volume
from ebsd.synthetic import synthetic_volume


@pytest.fixture(scope="module")
def vol():
    return synthetic_volume((3, 8, 9), mean_grain_size=4, seed=1)


@pytest.mark.parametrize("name", ["out.npy", "out.h5", "out.tif", "scan.v2", "out.H5EBSD"])
def test_unknown_extension_refused_with_the_writable_formats(tmp_path, vol, name):
    with pytest.raises(EBSDValueError) as ei:
        save_volume(vol, tmp_path / name)
    msg = str(ei.value)
    assert repr(name[name.rindex("."):].lower()) in msg
    for fmt in ("'.dream3d'", "'.ang' slices", "ending in '/'", "format='ang'"):
        assert fmt in msg
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_folder_paths(tmp_path, vol):
    # a trailing '/' makes a folder even with a dot in the name
    out = save_volume(vol, str(tmp_path / "scan.v2") + "/")
    assert out.is_dir() and len(list(out.glob("slice_*.ang"))) == 3
    assert np.allclose(load_volume(out).quaternions.abs(), vol.quaternions.abs(), atol=1e-5)
    # an existing folder (dotted name) is replaced with overwrite=True
    save_volume(vol, tmp_path / "scan.v2", overwrite=True)
    assert len(list((tmp_path / "scan.v2").glob("slice_*.ang"))) == 3
    # a bare name (no extension) is a folder, as before
    assert save_volume(vol, tmp_path / "slices").is_dir()
    # explicit format wins over the extension
    assert save_volume(vol, tmp_path / "odd.npy", format="ang").is_dir()
    assert save_volume(vol, tmp_path / "v.dream3d").is_file()
