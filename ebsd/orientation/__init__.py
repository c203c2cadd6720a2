"""Orientation math on torch (CPU and GPU) with crystal symmetry, following orix's conventions."""
from .conversions import euler_to_quat, quat_to_euler, positive_hemisphere

__all__ = ["euler_to_quat", "quat_to_euler", "positive_hemisphere"]
