"""napari writer contribution: save the EBSD volume behind an IPF layer as ``.dream3d``."""
from __future__ import annotations

from ..errors import EBSDValueError
from ._layers import volume_of


def write_dream3d(path: str, layer_data: list[tuple]) -> list[str]:
    """Write the first layer that carries an :class:`EBSDVolume` (e.g. a recovered volume) to ``path``.

    napari's save dialog has already confirmed replacing an existing file, so this overwrites.
    """
    from ..io import save_volume

    for data, meta, _ in layer_data:
        vol = (meta.get("metadata") or {}).get("ebsd_volume")
        if vol is not None:
            save_volume(vol, path, overwrite=True)
            return [path]
    raise EBSDValueError(
        "none of the selected layers holds an EBSD volume; select the IPF layer of a volume "
        "opened with this plugin (or a recovered one) and save again"
    )


__all__ = ["write_dream3d", "volume_of"]
