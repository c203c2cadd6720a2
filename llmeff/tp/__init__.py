"""Tensor parallelism with low-bit communication (Dong, Johnson, Cho et al., "Towards Low-bit Communication
for Tensor Parallel LLM Inference", 2024).

* :func:`shard` / :func:`calibrate` (:mod:`llmeff.tp.parallel`): column-parallel q/k/v/gate/up,
  row-parallel o/down in plain ``torch.distributed`` (gloo or NCCL).
* Codecs (:mod:`llmeff.tp.codecs`): ``fp32``, ``bf16`` (baseline), naive ``int8``/``int4``, and ``ours``
  (calibrated per-feature ranges, top 1/64 features in bf16, rest int4: 4.19 bits/value), reduced as a
  quantized all-gather followed by local dequantize-and-sum.
"""
from .codecs import CODECS, Codec, CommStats, FloatCodec, NaiveIntCodec, OutlierInt4Codec, make_codec
from .parallel import RowParallelLinear, TPModel, calibrate, check_world, shard

__all__ = ["CODECS", "Codec", "CommStats", "FloatCodec", "NaiveIntCodec", "OutlierInt4Codec", "make_codec",
           "RowParallelLinear", "TPModel", "calibrate", "check_world", "shard"]
