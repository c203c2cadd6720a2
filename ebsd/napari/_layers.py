"""Turn an :class:`~ebsd.EBSDVolume` into napari layer-data tuples, and find it again in a layer."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..volume import EBSDVolume

VOLUME_KEY = "ebsd_volume"


def ipf_rgb(vol: EBSDVolume, direction=(0.0, 0.0, 1.0)) -> np.ndarray:
    """``(Z, Y, X, 3)`` uint8 IPF colours (TSL key) of the volume's orientations; black where invalid.

    Multi-phase volumes are coloured per phase with each phase's own symmetry.
    """
    from ..orientation import ipf_colors

    rgb = torch.zeros(*vol.shape, 3)
    for pid, phase in vol.phase_info.items():
        sel = (vol.phases == pid) & vol.valid
        if len(vol.phase_info) == 1:
            sel = vol.valid
        if sel.any():
            rgb[sel] = ipf_colors(vol.quaternions[sel], phase.symmetry, direction=direction).float().cpu()
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def volume_layers(vol: EBSDVolume, name: str = "EBSD", direction=(0.0, 0.0, 1.0)) -> list[tuple]:
    """Layer-data tuples: IPF colours (RGB image, holds the volume in its metadata), phases (labels),
    CI and IQ (images, hidden). Every layer has the voxel scale ``vol.spacing`` (micrometres)."""
    vol = vol.to("cpu")
    scale = tuple(vol.spacing)
    translate = tuple(vol.origin)
    common = {"scale": scale, "translate": translate}
    return [
        (
            ipf_rgb(vol, direction),
            {"name": f"{name} IPF-Z", "rgb": True, "metadata": {VOLUME_KEY: vol}, **common},
            "image",
        ),
        (vol.phases.numpy().astype(np.int32) * vol.valid.numpy(), {"name": f"{name} phases", "visible": False, "opacity": 0.5, **common}, "labels"),
        (vol.confidence.numpy(), {"name": f"{name} CI", "visible": False, "colormap": "gray", **common}, "image"),
        (vol.image_quality.numpy(), {"name": f"{name} IQ", "visible": False, "colormap": "gray", **common}, "image"),
    ]


def volume_of(layer: Any) -> EBSDVolume | None:
    """The :class:`EBSDVolume` a layer was made from, or None."""
    meta = getattr(layer, "metadata", None) or {}
    vol = meta.get(VOLUME_KEY)
    return vol if isinstance(vol, EBSDVolume) else None
