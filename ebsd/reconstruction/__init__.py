"""3-D reconstruction of serial-sectioned EBSD volumes, as DREAM.3D's pipeline: mark bad voxels, align the
sections, clean up (neighbour orientation correlation, fill bad data, minimum grain size), segment grains,
grain statistics, and write one ``.dream3d`` with the feature arrays.

>>> res = align_sections(vol, method="misorientation", max_shift=10)
>>> res.shifts, res.outliers                       # (Z, 2) (dy, dx) applied per section; damaged sections
>>> rec = reconstruct(vol)                         # mark_bad, align, noc, segment, fill, min size, statistics
>>> rec.save("out.dream3d")

Modules: :mod:`~ebsd.reconstruction.align` (alignment, shifts, drift walks), :mod:`~ebsd.reconstruction.cleanup`
(the clean-up filters), :mod:`~ebsd.reconstruction.stats` (grain statistics), :mod:`~ebsd.reconstruction.pipeline`
(the chain and its output).
"""
from .align import AlignmentResult, align_sections, apply_shifts, random_drift
from .cleanup import fill_bad_data, mark_bad, neighbor_orientation_correlation, remove_small_grains
from .pipeline import DEFAULT_STEPS, STEPS, ReconstructionResult, reconstruct, write_reconstruction
from .stats import GrainStatistics, grain_mean_orientations, grain_statistics

__all__ = ["align_sections", "apply_shifts", "AlignmentResult", "random_drift", "mark_bad",
           "neighbor_orientation_correlation", "fill_bad_data", "remove_small_grains", "grain_statistics",
           "GrainStatistics", "grain_mean_orientations", "reconstruct", "ReconstructionResult",
           "write_reconstruction", "DEFAULT_STEPS", "STEPS"]
