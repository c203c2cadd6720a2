"""Orientation math on torch (CPU and GPU, any leading shape) with crystal symmetry, following orix's
conventions: unit quaternions ``(a, b, c, d)`` scalar first, Bunge Euler angles in radians, passive rotations
(sample -> crystal), crystal symmetry acting on the left (``q`` ~ ``S_i q``).

Numpy arrays are accepted at the edge; functions added here give numpy back for numpy input.
"""
from .conversions import euler_to_quat, quat_to_euler, positive_hemisphere
from .quaternion import (
    axis_angle_to_quat,
    matrix_to_quat,
    quat_angle,
    quat_conjugate,
    quat_multiply,
    quat_normalize,
    quat_rotate,
    quat_to_axis_angle,
    quat_to_matrix,
)
from .symmetry import Symmetry, get_symmetry
from .misorientation import misorientation, misorientation_angle, symmetry_equivalents
from .fundamental_zone import align_to_reference, mean_orientation, reduce_to_fundamental_zone
from .grains import segment_grains
from .ipf import ipf_colors, ipf_directions
from .cubochoric import (
    CUBOCHORIC_HALF_EDGE,
    HOMOCHORIC_RADIUS,
    cubochoric_to_homochoric,
    cubochoric_to_quat,
    homochoric_to_cubochoric,
    homochoric_to_quat,
    quat_to_cubochoric,
    quat_to_homochoric,
)

__all__ = [
    "euler_to_quat",
    "quat_to_euler",
    "positive_hemisphere",
    "quat_multiply",
    "quat_conjugate",
    "quat_normalize",
    "quat_rotate",
    "axis_angle_to_quat",
    "quat_to_axis_angle",
    "quat_to_matrix",
    "matrix_to_quat",
    "quat_angle",
    "Symmetry",
    "get_symmetry",
    "misorientation_angle",
    "misorientation",
    "symmetry_equivalents",
    "reduce_to_fundamental_zone",
    "mean_orientation",
    "align_to_reference",
    "segment_grains",
    "ipf_colors",
    "ipf_directions",
    "quat_to_homochoric",
    "homochoric_to_quat",
    "quat_to_cubochoric",
    "cubochoric_to_quat",
    "homochoric_to_cubochoric",
    "cubochoric_to_homochoric",
    "HOMOCHORIC_RADIUS",
    "CUBOCHORIC_HALF_EDGE",
]
