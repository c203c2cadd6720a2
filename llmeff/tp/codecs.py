"""Communication codecs for the row-parallel all-reduce of tensor parallelism.

A row-parallel layer (attention output projection, FF down projection) leaves each of the ``W`` ranks
with a partial sum ``x_r`` ``(N, D)`` (``N`` tokens, ``D`` hidden features); the layer output is
``sum_r x_r``. A codec turns that sum into communication:

* ``"fp32"`` / ``"bf16"``: the partial sums in that dtype (``bf16`` is the standard baseline; 16 bits/value).
  On NCCL with ``native=True`` it is one ``all_reduce``; otherwise (gloo, or ``native=False``) the same
  bytes are all-gathered and summed locally.
* ``"int8"`` / ``"int4"`` (naive): per-token symmetric absmax quantization, one bf16 scale per token:
  ``bits + 16 / D`` bits/value.
* ``"ours"``: per-feature ranges calibrated on a little text (:meth:`Codec.observe` over calibration
  forwards, then :meth:`Codec.finalize`); the ``ceil(D * outlier_frac)`` features (default 1/64) with the
  largest calibrated range are sent in bf16, the rest as int4 with static per-feature ranges (asymmetric
  ``[lo_f, hi_f]`` per rank, shrunk per feature by the factor that minimises the int4 error on the
  calibration data) -- the "group" of each scale is one feature across all tokens, so no scale travels
  with the payload: ``(D - k) * 4 + k * 16`` bits per token,
  ``4 + 12 / 64 = 4.1875`` bits/value. ``group_size=G`` adds a dynamic bf16 scale per token and group of
  ``G`` int4 features (``16 / G`` more bits/value) for inputs that drift outside the calibrated range.

int4/int8 payloads cannot be summed in flight, so quantized codecs reduce by an **all-gather of the packed
payloads followed by local dequantize-and-sum** (:func:`tensorkernels.quant.dequantize_sum`, summed in rank
order: every rank ends with identical values, its own contribution included in its quantized form).

Accounting (:attr:`Codec.stats`): calls, values reduced, payload bytes per rank, and the bytes each rank
sends on the wire (ring all-gather: ``(W-1) * payload``; ring all-reduce: ``2 (W-1)/W * payload``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from tensorkernels.quant import dequantize_sum, packed_width, quantize_pack

from ..errors import LLMEffValueError

CODECS = ("fp32", "bf16", "int8", "int4", "ours")


@dataclass
class CommStats:
    calls: int = 0
    values: int = 0                 # N * D reduced values (per rank)
    payload_bytes: int = 0          # bytes each rank contributes
    wire_bytes: float = 0.0         # bytes each rank sends (ring algorithms)
    seconds: float = 0.0            # filled by callers that time the reductions

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.payload_bytes / max(1, self.values)

    def as_dict(self) -> dict:
        return {"calls": self.calls, "values": self.values, "payload_bytes": self.payload_bytes,
                "wire_bytes": self.wire_bytes, "bits_per_value": self.bits_per_value}


def _all_gather_bytes(buf: torch.Tensor, group=None) -> torch.Tensor:
    """``(W, *buf.shape)`` uint8: every rank's ``buf`` (one all-gather)."""
    W = dist.get_world_size(group)
    out = torch.empty((W,) + tuple(buf.shape), dtype=buf.dtype, device=buf.device)
    if hasattr(dist, "all_gather_into_tensor") and dist.get_backend(group) == "nccl":
        dist.all_gather_into_tensor(out.view(-1), buf.contiguous().view(-1), group=group)
    else:
        dist.all_gather(list(out.unbind(0)), buf.contiguous(), group=group)
    return out


class Codec:
    """Base class. ``reduce(x)`` returns ``sum_r x_r`` (``x``'s shape and dtype) over the process group.

    Subclasses implement :meth:`encode` (``(N, D)`` -> ``(N, bytes)`` uint8 payload) and
    :meth:`decode_sum` (``(W, N, bytes)`` -> ``(N, D)`` float32 sum). With no process group initialised
    (or ``world_size == 1``) ``reduce`` encodes and decodes the local payload, so a single process sees
    exactly the codec's rounding (used to measure quantization error without communication).
    """

    name = "base"
    native_allreduce = False

    def __init__(self, backend: str | None = None):
        self.backend = backend
        self.stats = CommStats()
        self.group = None

    # calibration (only "ours" uses it) ---------------------------------------------------------------
    def observe(self, x: torch.Tensor) -> None:
        return None

    def finalize(self, group=None) -> None:
        return None

    @property
    def needs_calibration(self) -> bool:
        return False

    # coding ------------------------------------------------------------------------------------------
    def payload_width(self, D: int) -> int:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_sum(self, payloads: torch.Tensor, D: int) -> torch.Tensor:
        raise NotImplementedError

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, shape[-1])
        N, D = x2.shape
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(self.group) > 1
        W = dist.get_world_size(self.group) if distributed else 1
        nb = self.payload_width(D)
        self.stats.calls += 1
        self.stats.values += N * D
        self.stats.payload_bytes += N * nb
        if distributed and self.native_allreduce and dist.get_backend(self.group) == "nccl":
            y = x2.to(self._wire_dtype).contiguous()
            dist.all_reduce(y, group=self.group)
            self.stats.wire_bytes += 2 * (W - 1) / W * N * nb
            return y.to(dtype).reshape(shape)
        p = self.encode(x2)
        if distributed:
            p = _all_gather_bytes(p, self.group)
            self.stats.wire_bytes += (W - 1) * N * nb
        else:
            p = p.unsqueeze(0)
        return self.decode_sum(p, D).to(dtype).reshape(shape)


class FloatCodec(Codec):
    """Partial sums sent as ``float32`` or ``bfloat16`` (the baseline)."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16, native: bool = True, backend: str | None = None):
        super().__init__(backend)
        self._wire_dtype = dtype
        self.name = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
        self.native_allreduce = native

    def payload_width(self, D: int) -> int:
        return D * torch.tensor([], dtype=self._wire_dtype).element_size()

    def encode(self, x):
        return x.to(self._wire_dtype).contiguous().view(torch.uint8)

    def decode_sum(self, payloads, D):
        v = payloads.contiguous().view(self._wire_dtype).float()          # (W, N, D)
        out = v[0].clone()
        for w in range(1, v.shape[0]):
            out += v[w]
        return out


class NaiveIntCodec(Codec):
    """Per-token symmetric absmax int8/int4; payload row = packed codes + one bf16 scale."""

    def __init__(self, bits: int = 4, backend: str | None = None):
        super().__init__(backend)
        if bits not in (4, 8):
            raise LLMEffValueError(f"bits must be 4 or 8, got {bits}")
        self.bits = bits
        self.name = f"int{bits}"
        self._consts: dict = {}

    def _cz(self, D, device):
        key = (D, device)
        if key not in self._consts:
            self._consts[key] = (torch.ones(D, device=device), torch.full((D,), float(2 ** (self.bits - 1)),
                                                                          device=device))
        return self._consts[key]

    def payload_width(self, D):
        return packed_width(D, self.bits) + 2

    def encode(self, x):
        N, D = x.shape
        cs, cz = self._cz(D, x.device)
        qmax = 2 ** (self.bits - 1) - 1
        scale = (x.float().abs().amax(1) / qmax).clamp_min(1e-30).to(torch.bfloat16)
        codes = quantize_pack(x, cs, cz, scale.float(), bits=self.bits, backend=self.backend)
        return torch.cat([codes, scale.view(N, 1).view(torch.uint8)], 1)

    def decode_sum(self, payloads, D):
        W, N, nb = payloads.shape
        cs, cz = self._cz(D, payloads.device)
        codes = payloads[..., : nb - 2]
        scale = payloads[..., nb - 2:].contiguous().view(torch.bfloat16).float().reshape(W, N)
        return dequantize_sum(codes.contiguous(), cs, cz, D, scale, bits=self.bits, backend=self.backend)


class OutlierInt4Codec(Codec):
    """"Ours": calibrated per-feature ranges, top ``outlier_frac`` features by range in bf16, rest int4.

    Args:
        outlier_frac: share of features kept in bf16 (``ceil(D * outlier_frac)``; default 1/64).
        clip: calibrated ranges are multiplied by this factor (``1.0``: the calibration min/max).
        group_size: ``None`` (static per-feature scales, no scale in the payload) or ``G``: a dynamic bf16
            scale per token and group of ``G`` int4 features multiplies the static ones.
    """

    name = "ours"

    def __init__(self, outlier_frac: float = 1 / 64, clip: float | str = "mse", group_size: int | None = None,
                 max_calib_tokens: int = 4096, backend: str | None = None):
        super().__init__(backend)
        if not (0.0 <= outlier_frac < 1.0):
            raise LLMEffValueError(f"outlier_frac must be in [0, 1), got {outlier_frac}")
        if group_size is not None and group_size < 1:
            raise LLMEffValueError(f"group_size must be >= 1 or None, got {group_size}")
        if not (clip == "mse" or (isinstance(clip, (int, float)) and 0 < clip <= 1)):
            raise LLMEffValueError(f"clip must be 'mse' or a factor in (0, 1], got {clip!r}")
        self.outlier_frac = outlier_frac
        self.clip = clip
        self.group_size = group_size
        self.max_calib_tokens = max_calib_tokens
        self.lo = self.hi = None            # (D,) running calibration min / max
        self._samples: list = []            # calibration rows kept for the MSE clip search
        self._n_samples = 0
        self.outliers = self.inliers = None
        self.col_scale = self.col_zero = None            # this rank's (Di,) scales / zero points
        self.rank_scales = self.rank_zeros = None        # (W, Di): every rank's, for decoding
        self.ready = False

    @property
    def needs_calibration(self) -> bool:
        return not self.ready

    def observe(self, x):
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        lo, hi = x2.amin(0), x2.amax(0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if self._n_samples < self.max_calib_tokens:
            take = x2[: self.max_calib_tokens - self._n_samples]
            self._samples.append(take.clone())
            self._n_samples += take.shape[0]

    @staticmethod
    def _mse_clip(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  grid=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)) -> tuple[torch.Tensor, torch.Tensor]:
        """Per feature, the shrink of ``[lo, hi]`` about its midpoint (from ``grid``) that minimises the
        int4 round-trip squared error on the calibration rows ``x`` ``(T, Di)``."""
        mid, half = (lo + hi) / 2, ((hi - lo) / 2).clamp_min(1e-8)
        best_err = torch.full_like(mid, float("inf"))
        best = torch.ones_like(mid)
        for c in grid:
            h = half * c
            sc = 2 * h / 15.0
            q = torch.round((x - (mid - h)) / sc).clamp_(0, 15)
            err = ((q * sc + (mid - h)) - x).pow(2).sum(0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, torch.full_like(best, c), best)
        return mid - half * best, mid + half * best

    def finalize(self, group=None):
        """Fix the ranges and choose the outlier features.

        Outliers (shared by all ranks): the top ``outlier_frac`` features by calibrated range (max over
        ranks). Inlier ranges are per rank (each rank's partial sums have their own distribution): the
        calibration min/max, shrunk per feature by ``clip`` (``"mse"``: the factor minimising the int4
        error on the calibration rows); every rank's ranges are all-gathered once so any rank can decode
        any payload."""
        if self.lo is None:
            raise LLMEffValueError("codec 'ours' was never calibrated: run calibration forwards first "
                                   "(llmeff.tp.calibrate)")
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
        rng = self.hi - self.lo
        if distributed:
            rng = rng.clone()
            dist.all_reduce(rng, op=dist.ReduceOp.MAX, group=group)
        D = rng.shape[0]
        k = min(D - 1, math.ceil(D * self.outlier_frac)) if self.outlier_frac > 0 else 0
        order = torch.argsort(rng, descending=True)
        self.outliers = order[:k].sort().values
        mask = torch.ones(D, dtype=torch.bool, device=rng.device)
        mask[self.outliers] = False
        self.inliers = torch.nonzero(mask).squeeze(1)
        lo_i, hi_i = self.lo[self.inliers], self.hi[self.inliers]
        if self.clip == "mse":
            xs = torch.cat(self._samples)[:, self.inliers]
            lo_i, hi_i = self._mse_clip(xs, lo_i, hi_i)
        else:
            mid, half = (lo_i + hi_i) / 2, (hi_i - lo_i) / 2 * float(self.clip)
            lo_i, hi_i = mid - half, mid + half
        self._samples = []
        mid = (lo_i + hi_i) / 2
        half = ((hi_i - lo_i) / 2).clamp_min(1e-8)
        if self.group_size is None:
            self.col_scale = 2 * half / 15.0
            self.col_zero = -(mid - half) / self.col_scale
        else:                                  # dynamic per-group multiplier: static range maps to [-1, 1]
            self.col_scale = half.clone()
            self.col_zero = mid / half          # x / half - mid / half in [-1, 1]
        sz = torch.stack([self.col_scale, self.col_zero])
        if distributed:
            allsz = torch.empty((dist.get_world_size(group),) + tuple(sz.shape), dtype=sz.dtype, device=sz.device)
            dist.all_gather(list(allsz.unbind(0)), sz.contiguous(), group=group)
        else:
            allsz = sz.unsqueeze(0)
        self.rank_scales, self.rank_zeros = allsz[:, 0].contiguous(), allsz[:, 1].contiguous()
        self.ready = True

    def _n_groups(self, Di):
        return 0 if self.group_size is None else -(-Di // self.group_size)

    def payload_width(self, D):
        k = 0 if self.outliers is None else self.outliers.numel()
        Di = D - k
        return packed_width(Di, 4) + 2 * k + 2 * self._n_groups(Di)

    def encode(self, x):
        if not self.ready:
            raise LLMEffValueError("codec 'ours' needs calibration before use (llmeff.tp.calibrate)")
        N, D = x.shape
        xi = x.index_select(1, self.inliers)
        gs = None                                   # payload row: [int4 codes | bf16 outliers | bf16 group scales]
        if self.group_size is None:
            parts = [quantize_pack(xi, self.col_scale, self.col_zero, bits=4, backend=self.backend)]
        else:
            codes, gs = self._encode_groups(xi)
            parts = [codes]
        if self.outliers.numel():
            parts.append(x.index_select(1, self.outliers).to(torch.bfloat16).contiguous().view(torch.uint8))
        if gs is not None:
            parts.append(gs)
        return torch.cat(parts, 1)

    def _encode_groups(self, xi):
        N, Di = xi.shape
        G = self.group_size
        ng = self._n_groups(Di)
        y = xi.float() / self.col_scale - self.col_zero              # static normalisation to ~[-1, 1]
        pad = ng * G - Di
        yp = torch.nn.functional.pad(y, (0, pad)).view(N, ng, G)
        gs = (yp.abs().amax(-1) / 7.0).clamp_min(1e-30).to(torch.bfloat16)       # (N, ng)
        q = torch.round(yp / gs.float().unsqueeze(-1)).clamp_(-8, 7) + 8
        q = q.view(N, ng * G)[:, :Di].to(torch.uint8)
        from tensorkernels.quant import pack_reference

        return pack_reference(q, 4), gs.contiguous().view(torch.uint8)

    def decode_sum(self, payloads, D):
        W, N, _ = payloads.shape
        k = self.outliers.numel()
        Di = D - k
        nq = packed_width(Di, 4)
        out = torch.empty(N, D, dtype=torch.float32, device=payloads.device)
        codes = payloads[..., :nq].contiguous()
        if W != self.rank_scales.shape[0]:
            raise LLMEffValueError(f"got {W} payloads, the codec was calibrated with {self.rank_scales.shape[0]} ranks")
        if self.group_size is None:
            acc = dequantize_sum(codes[:1], self.rank_scales[0], self.rank_zeros[0], Di, bits=4, backend=self.backend)
            for w in range(1, W):
                acc += dequantize_sum(codes[w:w + 1], self.rank_scales[w], self.rank_zeros[w], Di, bits=4,
                                      backend=self.backend)
            out[:, self.inliers] = acc
        else:
            from tensorkernels.quant import unpack_reference

            ng, G = self._n_groups(Di), self.group_size
            gs = payloads[..., nq + 2 * k:].contiguous().view(torch.bfloat16).float()        # (W, N, ng)
            q = unpack_reference(codes, Di, 4).float() - 8                                    # (W, N, Di)
            gsc = gs.repeat_interleave(G, -1)[..., :Di]
            y = q * gsc
            xs = (y + self.rank_zeros.unsqueeze(1)) * self.rank_scales.unsqueeze(1)
            acc = xs[0].clone()
            for w in range(1, W):
                acc += xs[w]
            out[:, self.inliers] = acc
        if k:
            ob = payloads[..., nq:nq + 2 * k].contiguous().view(torch.bfloat16).float()      # (W, N, k)
            acc = ob[0].clone()
            for w in range(1, W):
                acc += ob[w]
            out[:, self.outliers] = acc
        return out


def make_codec(name: str, backend: str | None = None, **kw) -> Codec:
    """A fresh codec by name: ``fp32``, ``bf16``, ``int8``, ``int4`` (naive) or ``ours``.

    Keyword arguments go to the codec (``native=`` for the float ones; ``outlier_frac=``, ``clip=``,
    ``group_size=`` for ``ours``)."""
    if name == "fp32":
        return FloatCodec(torch.float32, backend=backend, **kw)
    if name == "bf16":
        return FloatCodec(torch.bfloat16, backend=backend, **kw)
    if name in ("int8", "int4"):
        return NaiveIntCodec(int(name[3:]), backend=backend, **kw)
    if name == "ours":
        return OutlierInt4Codec(backend=backend, **kw)
    raise LLMEffValueError(f"unknown codec {name!r}; use one of {CODECS}")
