"""ShadowKV (Sun, Chang, Bao, ..., Dong, Chi, Chen, 2024): a low-rank pre-RoPE key cache on the accelerator,
values offloaded to (pinned) CPU memory, and at each decode step only the chunks that the query's attention to
chunk *landmarks* ranks highest are rebuilt (keys from the factors, with RoPE on the fly) and fetched (values).

At prefill (the first forward of a sequence; its attention is exact):

* pre-RoPE keys (recovered by rotating back with the step's cos/sin) of the sequence, heads side by side
  (T x Hkv*D), are factorised to rank ``r`` (truncated SVD through the Hkv*D x Hkv*D Gram matrix): ``A`` (T x r)
  and ``Bf`` (r x Hkv*D) stay on the device;
* the post-RoPE keys are cut into chunks of ``chunk`` tokens; a chunk's landmark is the mean of its keys; the
  ``outlier_chunks`` chunks whose keys are least similar to their landmark (lowest minimum cosine), and the last
  ``local_window`` tokens (plus the tail that does not fill a chunk), stay exact on the device;
* values of the chunked part move to CPU memory (pinned on CUDA); nothing else of the chunked part is kept.

At decode: softmax(q . landmarks / sqrt(D)) summed over the query heads of each key-value group picks the top
``budget // chunk`` chunks (outliers excluded, they are exact anyway); their keys are rebuilt by
:func:`tensorkernels.rope_reconstruct` while their values are gathered on the CPU and copied over (on a side stream
on CUDA); attention runs over [rebuilt chunks, exact tokens, new tokens]. Generated tokens are kept exactly.
"""
from __future__ import annotations

import torch

from ..errors import LLMEffValueError
from ._layers import PolicyLayer, _bool_mask, _gather_cols
from .base import KVPolicy


_KERNEL_BACKEND = None  # tensorkernels' default: Triton on CUDA


class ShadowKV(KVPolicy):
    """ShadowKV with a sparse budget of ``budget`` tokens (``budget // chunk`` chunks) rebuilt per decode step."""

    name = "shadowkv"

    def __init__(self, budget: int = 2048, rank: int = 160, chunk: int = 8, local_window: int = 32,
                 outlier_chunks: int = 48, offload: bool | None = None):
        if budget < chunk or chunk < 1 or rank < 1 or local_window < 0 or outlier_chunks < 0:
            raise LLMEffValueError(f"ShadowKV needs budget >= chunk >= 1, rank >= 1, local_window >= 0, "
                                   f"outlier_chunks >= 0; got {budget}, {chunk}, {rank}, {local_window}, {outlier_chunks}")
        self.budget = int(budget)
        self.rank = int(rank)
        self.chunk = int(chunk)
        self.local_window = int(local_window)
        self.outlier_chunks = int(outlier_chunks)
        self.offload = offload  # None: offload values when the model runs on CUDA

    def make_layer(self, info, ctx):
        return ShadowKVLayer(self, info, ctx)

    def describe(self) -> dict:
        return {"policy": self.name, "budget": self.budget, "rank": self.rank, "chunk": self.chunk,
                "local_window": self.local_window, "outlier_chunks": self.outlier_chunks}


def _unrope(k, cos, sin, scaling=1.0):
    """Invert rotate-half RoPE: k (B, Hkv, T, D), cos/sin (B, T, D) as passed to the attention module."""
    cos = cos.unsqueeze(1).to(torch.float32)
    sin = sin.unsqueeze(1).to(torch.float32)
    kf = k.float()
    D = kf.shape[-1]
    rh = torch.cat([-kf[..., D // 2 :], kf[..., : D // 2]], dim=-1)
    return (kf * cos - rh * sin) / (scaling * scaling)


class ShadowKVLayer(PolicyLayer):
    """One layer's ShadowKV cache. Tensors (B: batch, Hkv: key-value heads, C: chunks, Tc = C*chunk):
    device: ``A`` (B, Tc, r), ``Bf`` (B, r, Hkv*D), ``landmarks`` (B, Hkv, C, D), ``outlier`` (B, Hkv, C) bool,
    ``rope_pos`` (B, Tc), ``keys``/``values`` (B, Hkv, E, D) exact tokens with ``pos`` (B, Hkv, E);
    host: ``v_host`` (B, Hkv, Tc, D)."""

    def __init__(self, policy, info, ctx):
        super().__init__(policy, info, ctx)
        self.A = self.Bf = self.landmarks = self.outlier = self.rope_pos = self.v_host = None
        self.pos = None
        self._stream = None

    def _tensors(self) -> dict:
        return {"keys": self.keys, "values": self.values, "pos": self.pos, "A": self.A, "Bf": self.Bf,
                "landmarks": self.landmarks, "outlier": self.outlier, "rope_pos": self.rope_pos, "v_host": self.v_host}

    def memory_bytes(self) -> dict:
        m = super().memory_bytes()
        if self.v_host is not None and self.v_host.device == torch.device(self.device):
            # no accelerator: the "offloaded" values share the device; report them as host all the same
            nb = self.v_host.numel() * self.v_host.element_size()
            m["device"] -= nb
            m["host"] += nb
        return m

    # ---- prefill: factorise ---------------------------------------------------------------------------
    def _compress(self, k, v, maskb):
        p = self.policy
        B, hk, T, D = k.shape
        c = p.chunk
        Tc = max(0, (T - p.local_window) // c) * c
        self.pos = torch.arange(T, device=k.device).view(1, 1, T).expand(B, hk, T)
        if Tc == 0:
            self.keys, self.values = k.contiguous(), v.contiguous()
            self.pos = self.pos.contiguous()
            return
        C = Tc // c
        pe = self._step.get("position_embeddings")
        inv_freq, scaling = self.ctx.rope()
        if pe is None:
            raise LLMEffValueError("ShadowKV needs the rotary cos/sin passed to the attention module "
                                   "(position_embeddings); this model does not pass them")
        cos, sin = pe
        kpre = _unrope(k[:, :, :Tc], cos[:, :Tc].expand(B, -1, -1), sin[:, :Tc].expand(B, -1, -1), scaling)
        X = kpre.transpose(1, 2).reshape(B, Tc, hk * D)  # float32
        r = min(p.rank, hk * D, Tc)
        gram = X.transpose(1, 2) @ X
        _, evecs = torch.linalg.eigh(gram.double() if X.device.type == "cpu" else gram)
        V = evecs[..., -r:].flip(-1).to(torch.float32)  # (B, HD, r), leading directions first
        self.A = (X @ V).to(k.dtype).contiguous()
        self.Bf = V.transpose(1, 2).to(k.dtype).contiguous()
        pid = self._step.get("position_ids")
        if pid is None:
            pid = torch.arange(T, device=k.device)[None]
        self.rope_pos = pid[:, :Tc].expand(B, Tc).to(torch.int32).contiguous()
        kc = k[:, :, :Tc].float().reshape(B, hk, C, c, D)
        lm = kc.mean(3)
        self.landmarks = lm.to(k.dtype)
        sim = torch.nn.functional.cosine_similarity(kc, lm.unsqueeze(3), dim=-1).amin(-1)  # (B, hk, C)
        n_out = min(p.outlier_chunks, C)
        self.outlier = torch.zeros(B, hk, C, dtype=torch.bool, device=k.device)
        exact_idx = []
        if n_out:
            oc = (-sim).topk(n_out, dim=-1).indices.sort(-1).values  # (B, hk, n_out)
            self.outlier.scatter_(2, oc, True)
            exact_idx.append((oc.unsqueeze(-1) * c + torch.arange(c, device=k.device)).reshape(B, hk, n_out * c))
        exact_idx.append(torch.arange(Tc, T, device=k.device).view(1, 1, -1).expand(B, hk, T - Tc))
        eidx = torch.cat(exact_idx, dim=-1)
        gi = eidx.unsqueeze(-1).expand(*eidx.shape, D)
        self.keys = torch.gather(k, 2, gi).contiguous()
        self.values = torch.gather(v, 2, gi).contiguous()
        self.pos = eidx.contiguous()
        vc = v[:, :, :Tc]
        offload = p.offload if p.offload is not None else k.is_cuda
        if offload and k.is_cuda:
            self.v_host = torch.empty(vc.shape, dtype=vc.dtype, device="cpu", pin_memory=True)
            self.v_host.copy_(vc)
        else:
            self.v_host = vc.contiguous().clone()
        # (B, Hkv, Tc, D) contiguous = (B*Hkv*C, chunk*D) rows: one row per chunk

    # ---- decode -----------------------------------------------------------------------------------------
    def _select(self, q):
        """Chunk ids (B, Hkv, k) ranked by the queries' softmax attention to the landmarks."""
        B, H, n, D = q.shape
        hk = self.landmarks.shape[1]
        C = self.landmarks.shape[2]
        k_sel = min(self.policy.budget // self.policy.chunk, C - int(self.outlier[0, 0].sum()))
        if k_sel <= 0:
            return None
        qg = q.reshape(B, hk, (H // hk) * n, D)
        s = (qg @ self.landmarks.transpose(-1, -2)).float() * (D ** -0.5)
        s = torch.softmax(s, dim=-1).sum(2).masked_fill(self.outlier, float("-inf"))
        return s.topk(k_sel, dim=-1).indices

    def _rebuild(self, tok, inv_freq, scaling):
        """Keys of tokens ``tok`` from the factors, RoPE applied (the Triton kernel on CUDA; if it cannot run there,
        once a warning and the torch reference from then on)."""
        global _KERNEL_BACKEND
        from tensorkernels import rope_reconstruct

        try:
            return rope_reconstruct(self.A, self.Bf, tok, self.rope_pos, inv_freq, scaling, backend=_KERNEL_BACKEND)
        except Exception as exc:  # pragma: no cover - depends on the GPU / Triton build
            if _KERNEL_BACKEND == "torch":
                raise
            import warnings

            warnings.warn(f"ShadowKV: Triton rope_reconstruct failed ({exc!r}); using the torch reference")
            _KERNEL_BACKEND = "torch"
            return rope_reconstruct(self.A, self.Bf, tok, self.rope_pos, inv_freq, scaling, backend="torch")

    def _fetch(self, top):
        """Keys (B, Hkv, N, D) rebuilt with RoPE and values (B, Hkv, N, D) from the host copy of chunks ``top``
        (B, Hkv, k); N = k * chunk. Values are copied as whole chunk rows (``index_select`` of contiguous rows on
        the host, then one copy over on a side stream while the keys are rebuilt)."""
        B, hk, k = top.shape
        c = self.policy.chunk
        C = self.landmarks.shape[2]
        D = self.landmarks.shape[-1]
        tok = (top.unsqueeze(-1) * c + torch.arange(c, device=top.device)).reshape(B, hk, k * c)
        inv_freq, scaling = self.ctx.rope()
        dev = top.device
        base = (torch.arange(B * hk, device=dev) * C).view(B, hk, 1)
        rows = (base + top).reshape(-1)  # rows of v_host viewed as (B*Hkv*C, chunk*D)
        vh = self.v_host.view(B * hk * C, c * D)
        if self.v_host.device != dev:
            rows_cpu = rows.to("cpu")
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=dev)
            staging = torch.empty((rows_cpu.numel(), c * D), dtype=vh.dtype, pin_memory=True)
            torch.index_select(vh, 0, rows_cpu, out=staging)
            self._stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(self._stream):
                vals = staging.to(dev, non_blocking=True)
            keys = self._rebuild(tok, inv_freq.to(dev), scaling)
            torch.cuda.current_stream(dev).wait_stream(self._stream)
            vals.record_stream(torch.cuda.current_stream(dev))
        else:
            keys = self._rebuild(tok, inv_freq.to(dev), scaling)
            vals = vh.index_select(0, rows)
        return tok, keys, vals.view(B, hk, k * c, D)

    def attend(self, module, q, mask, scaling):
        k_new, v_new = self.take_pending()
        B, H, n, D = q.shape
        hk = k_new.shape[1]
        seen = self.cumulative_length
        maskb = _bool_mask(mask)
        if seen == 0 and self.keys is None:
            out = self._sdpa(q, k_new, v_new, maskb, scaling)
            self._compress(k_new, v_new, maskb)
            self.cumulative_length = n
            return out
        # past = [rebuilt chunks ; exact tokens]
        past_k, past_v, past_pos = [], [], []
        if self.landmarks is not None:
            top = self._select(q)
            if top is not None:
                tok, ks, vs = self._fetch(top)
                past_k.append(ks)
                past_v.append(vs)
                past_pos.append(tok)
        past_k.append(self.keys)
        past_v.append(self.values)
        past_pos.append(self.pos)
        K = torch.cat(past_k, dim=2) if len(past_k) > 1 else self.keys
        V = torch.cat(past_v, dim=2) if len(past_v) > 1 else self.values
        P = torch.cat(past_pos, dim=2) if len(past_pos) > 1 else self.pos
        out = self._attend_over(q, K, V, P, k_new, v_new, maskb, scaling)
        new_pos = torch.arange(seen, seen + n, device=q.device).view(1, 1, n).expand(B, hk, n)
        self.keys = torch.cat([self.keys, k_new], dim=2)
        self.values = torch.cat([self.values, v_new], dim=2)
        self.pos = torch.cat([self.pos, new_pos], dim=2)
        self.cumulative_length = seen + n
        return out

    def _attend_over(self, q, K, V, P, k_new, v_new, maskb, scaling):
        B, hk, n = k_new.shape[0], k_new.shape[1], q.shape[2]
        mpast = _gather_cols(maskb, P) if maskb is not None else None
        mnew = self._new_mask(maskb, self.cumulative_length, n, q.device).expand(B, hk, n, n)
        return self._attend_rows(q, K, V, mpast, k_new, v_new, mnew, scaling)[0]
