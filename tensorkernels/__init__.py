"""Shared GPU kernels: Triton on CUDA, exact torch reference everywhere.

Every public kernel is one function with a ``backend=`` argument:

* ``None`` / ``"auto"`` (default): Triton when the input lives on a CUDA device and Triton is
  importable, the torch reference otherwise. The environment variable ``EBSDTK_KERNEL_BACKEND``
  (``auto``, ``torch`` or ``triton``) overrides the default for every call.
* ``"torch"``: the reference implementation (always available, any device).
* ``"triton"``: force the Triton kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

This package imports nothing from the other packages of the toolkit.
"""
from ._dispatch import KernelBackendError, resolve_backend, triton_available
from .gathered_ff import gathered_ff
from .threshold import threshold, threshold_residual
from .tucker import mode_product, multi_mode_product, tucker_to_tensor, unfold, fold
from .rope_reconstruct import rope_reconstruct
from .rpca_fused import residual_contract
from .misorientation import misorientation_angle
from .quant import dequantize_sum, packed_width, quantize_pack
from .stem_gather import gather_act_mul, gather_rows

__all__ = [
    "KernelBackendError",
    "resolve_backend",
    "triton_available",
    "threshold",
    "threshold_residual",
    "mode_product",
    "multi_mode_product",
    "tucker_to_tensor",
    "unfold",
    "fold",
    "rope_reconstruct",
    "residual_contract",
    "misorientation_angle",
    "quantize_pack",
    "dequantize_sum",
    "packed_width",
    "gather_act_mul",
    "gather_rows",
]
