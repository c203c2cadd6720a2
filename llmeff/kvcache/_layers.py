"""Cache layers (transformers 5.x ``DynamicLayer`` subclasses) that hold what a policy keeps, and the attention
function that reads them. Imported only when a policy is applied (it imports ``transformers``).

How a policy is wired into an unmodified model (see :func:`llmeff.kvcache.apply`):

* a forward pre-hook on each attention module swaps the layer of whatever ``Cache`` the model was given (the
  ``DynamicCache`` that ``generate`` makes, for instance) for the policy's cache layer, and points the module at it;
* ``cache.update`` (called by the unmodified attention forward) only hands the new keys and values to the layer;
* the model's attention implementation is switched to ``"llmeff_kvcache"``, whose function asks the layer to
  attend (over its kept tokens, its low-rank state, its rebuilt keys...) and then to evict;
* the layer reports the true number of tokens seen (``get_seq_length``) so rotary positions stay right, and asks
  for the attention mask in absolute positions (``get_mask_sizes``); it picks the mask columns of the tokens it
  kept, so padding and sliding windows keep working.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

ATTN_NAME = "llmeff_kvcache"
_NEG = torch.finfo(torch.float32).min
_QCHUNK = 256  # queries per block when a multi-token step meets a non-empty cache


def _bool_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """HF 4-D mask (bool: True attends; or additive float) -> bool (B, 1, q, kv), or None."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        mask = mask > _NEG / 2
    return mask[:, :1]


def _tensor_bytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def _gqa(q: torch.Tensor, hkv: int) -> torch.Tensor:
    """(B, H, n, D) -> (B, Hkv, G*n, D), grouping the query heads that share a key-value head."""
    B, H, n, D = q.shape
    return q.reshape(B, hkv, (H // hkv) * n, D)


def _ungqa(x: torch.Tensor, H: int) -> torch.Tensor:
    B, hkv, gn, D = x.shape
    return x.reshape(B, H, gn * hkv // H, D)


def _expand_rows(m: torch.Tensor, G: int) -> torch.Tensor:
    """(B, Hkv, n, L) -> (B, Hkv, G*n, L) matching :func:`_gqa` row order."""
    B, hkv, n, L = m.shape
    return m.unsqueeze(2).expand(B, hkv, G, n, L).reshape(B, hkv, G * n, L)


def _gather_cols(maskb: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mask columns at absolute positions: maskb (B, 1, n, T) bool, pos (B, Hkv, L) -> (B, Hkv, n, L)."""
    B, _, n, T = maskb.shape
    hkv, L = pos.shape[1], pos.shape[2]
    src = maskb.expand(B, hkv, n, T)
    idx = pos.unsqueeze(2).expand(B, hkv, n, L)
    return torch.gather(src, 3, idx)


class PolicyLayer(DynamicLayer):
    """Common part of the policy cache layers: pending new tokens, true length, absolute-position masks."""

    is_sliding = False
    is_croppable = False

    def __init__(self, policy, info, ctx):
        super().__init__()
        self.policy = policy
        self.info = info
        self.ctx = ctx
        self.cumulative_length = 0
        self._pending = None
        self._step = {}

    # ---- transformers Cache-layer API -------------------------------------------------------------
    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._pending = (key_states, value_states)
        return key_states, value_states

    def get_seq_length(self, *_) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length) -> tuple[int, int]:
        # masks in absolute positions: the layer gathers the columns of the tokens it kept
        # (transformers < 5 passes the cache_position tensor of the new tokens instead of their number)
        q = int(query_length.shape[0]) if isinstance(query_length, torch.Tensor) else int(query_length)
        return self.cumulative_length + q, 0

    def get_max_length(self) -> int:
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"{type(self).__name__}: a compressed cache cannot be cropped (rolled back)")

    def reset(self) -> None:
        self.__init__(self.policy, self.info, self.ctx)

    def _tensors(self) -> dict:
        return {}

    def batch_repeat_interleave(self, repeats: int) -> None:
        for name, t in self._tensors().items():
            if isinstance(t, torch.Tensor):
                setattr(self, name, t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for name, t in self._tensors().items():
            if isinstance(t, torch.Tensor):
                setattr(self, name, t[indices.to(t.device)])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for name, t in self._tensors().items():
            if isinstance(t, torch.Tensor):
                setattr(self, name, t.index_select(0, beam_idx.to(t.device)))

    def memory_bytes(self) -> dict:
        """Bytes held by this layer's tensors: ``{"device": ..., "host": ...}`` (host: offloaded to CPU while the
        model runs on an accelerator)."""
        dev = host = 0
        for t in self._tensors().values():
            if isinstance(t, torch.Tensor):
                nb = _tensor_bytes(t)
                if self.device is not None and t.device.type != torch.device(self.device).type:
                    host += nb
                else:
                    dev += nb
        return {"device": dev, "host": host}

    # ---- per-step context (set by the pre-hook) -----------------------------------------------------
    def set_step(self, **kw) -> None:
        self._step = kw

    def take_pending(self):
        k, v = self._pending
        self._pending = None
        return k, v

    # ---- attention pieces ---------------------------------------------------------------------------
    @staticmethod
    def _sdpa(q, k, v, maskb, scaling):
        """Exact attention of a first chunk (nothing cached yet), as transformers' sdpa computes it."""
        G = q.shape[1] // k.shape[1]
        if G > 1:
            k = k.repeat_interleave(G, dim=1)
            v = v.repeat_interleave(G, dim=1)
        if maskb is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, scale=scaling)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=maskb, scale=scaling)

    @staticmethod
    def _new_mask(maskb, seen, n, device):
        """(1|B, 1, n, n) bool visibility among the n new tokens (causal when there is no mask)."""
        if maskb is not None:
            return maskb[..., seen : seen + n]
        return torch.ones(n, n, dtype=torch.bool, device=device).tril_()[None, None]

    @staticmethod
    def _col_sums(q, k, maskb_new, scaling, qchunk=_QCHUNK):
        """Sum over queries and grouped heads of softmax(q k^T) columns: (B, Hkv, n) float32 (H2O scores of a
        first chunk, computed in blocks of queries so that no n x n matrix is ever held)."""
        B, H, n, D = q.shape
        hkv = k.shape[1]
        G = H // hkv
        out = torch.zeros(B, hkv, n, dtype=torch.float32, device=q.device)
        kf = k.float()
        for i0 in range(0, n, qchunk):
            i1 = min(n, i0 + qchunk)
            qq = q[:, :, i0:i1].float().reshape(B, hkv, G * (i1 - i0), D)
            lg = (qq @ kf.transpose(-1, -2)) * scaling
            if maskb_new is None:
                m = torch.ones(i1 - i0, n, dtype=torch.bool, device=q.device).tril_(diagonal=i0)[None, None]
            else:
                m = maskb_new[..., i0:i1, :]
            m = _expand_rows(m.expand(B, hkv, i1 - i0, n), G)
            p = torch.softmax(lg.masked_fill(~m, _NEG), dim=-1).masked_fill(~m, 0.0)
            out += p.sum(2)
        return out


    @staticmethod
    def _attend_rows(q, K, V, mpast, k_new, v_new, mnew, scaling, state=None, sums=False):
        """Attention of queries ``q`` (B, H, n, D) over cached ``K``/``V`` (B, Hkv, L, D, or None) visible per
        ``mpast`` (B, Hkv, n, L) bool or None (all), the new ``k_new``/``v_new`` (B, Hkv, n, D) visible per ``mnew``
        (B, Hkv, n, n), and optionally one extra "virtual token" per query row, ``state(qg) -> (logit, value)``
        (LESS). Blocks of queries; softmax in float32. Returns (out (B, H, n, D), column sums of the probabilities
        over queries and grouped heads for the cached and the new tokens (float32; None unless ``sums``))."""
        B, H, n, D = q.shape
        hkv = k_new.shape[1]
        G = H // hkv
        L = 0 if K is None else K.shape[2]
        outs = []
        sc_past = torch.zeros(B, hkv, L, dtype=torch.float32, device=q.device) if sums else None
        sc_new = torch.zeros(B, hkv, n, dtype=torch.float32, device=q.device) if sums else None
        for i0 in range(0, n, _QCHUNK):
            i1 = min(n, i0 + _QCHUNK)
            nq = i1 - i0
            qg = q[:, :, i0:i1].reshape(B, hkv, G * nq, D)
            parts = []
            if L:
                lp = (qg @ K.transpose(-1, -2)).float() * scaling
                if mpast is not None:
                    lp = lp.masked_fill(~_expand_rows(mpast[:, :, i0:i1], G), _NEG)
                parts.append(lp)
            mn = _expand_rows(mnew[:, :, i0:i1], G)
            parts.append(((qg @ k_new.transpose(-1, -2)).float() * scaling).masked_fill(~mn, _NEG))
            st = state(qg) if state is not None else None
            if st is not None:
                parts.append(st[0])
            p = torch.softmax(torch.cat(parts, dim=-1), dim=-1)
            pv = p.to(v_new.dtype)
            o = pv[..., L : L + n] @ v_new
            if L:
                o = o + pv[..., :L] @ V
            if st is not None:
                o = o + (p[..., -1:] * st[1].float()).to(o.dtype)
            outs.append(o.reshape(B, H, nq, D))
            if sums:
                if L:
                    sc_past += p[..., :L].sum(2)
                sc_new += p[..., L : L + n].masked_fill(~mn, 0.0).sum(2)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return out, sc_past, sc_new


class EvictionLayer(PolicyLayer):
    """Keeps at most ``policy.budget`` tokens per (sequence, key-value head); evicted tokens are dropped (and,
    with LESS, folded into a constant-size low-rank state first).

    Tensors: ``keys``/``values`` (B, Hkv, L, D), ``pos`` (B, Hkv, L) absolute positions, ``scores`` (B, Hkv, L)
    accumulated attention (H2O), ``less_H`` (B, Hkv, R, D) and ``less_z`` (B, Hkv, R) (LESS).
    """

    def __init__(self, policy, info, ctx, less_maps=None):
        super().__init__(policy, info, ctx)
        self.less_maps = less_maps
        self.pos = None
        self.scores = None
        self.less_H = None
        self.less_z = None

    def reset(self) -> None:
        self.__init__(self.policy, self.info, self.ctx, self.less_maps)

    def _tensors(self) -> dict:
        return {"keys": self.keys, "values": self.values, "pos": self.pos, "scores": self.scores,
                "less_H": self.less_H, "less_z": self.less_z}

    @property
    def evictor(self):
        return getattr(self.policy, "base", self.policy)

    def kept_tokens(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[2])

    # ---- attention ----------------------------------------------------------------------------------
    def attend(self, module, q, mask, scaling):
        k_new, v_new = self.take_pending()
        B, H, n, D = q.shape
        hkv = k_new.shape[1]
        seen = self.cumulative_length
        maskb = _bool_mask(mask)
        needs_scores = self.evictor.needs_scores
        L = self.kept_tokens()
        if L == 0 and self.less_H is None:
            out = self._sdpa(q, k_new, v_new, maskb, scaling)
            mnew = self._new_mask(maskb, seen, n, q.device)
            sc_new = self._col_sums(q, k_new, mnew, scaling) if needs_scores else None
            vis_past = None
            vis_new = mnew[..., -1, :].expand(B, hkv, n)
        else:
            out, sc_past, sc_new, vis_past, vis_new = self._attend_explicit(q, k_new, v_new, maskb, scaling)
            if needs_scores and L:
                self.scores = self.scores + sc_past
        self._append_and_evict(k_new, v_new, sc_new, vis_past, vis_new)
        return out

    def _attend_explicit(self, q, k_new, v_new, maskb, scaling):
        seen = self.cumulative_length
        L = self.kept_tokens()
        B, hkv, n = k_new.shape[0], k_new.shape[1], q.shape[2]
        mnew = self._new_mask(maskb, seen, n, q.device).expand(B, hkv, n, n)
        mpast = _gather_cols(maskb, self.pos) if (maskb is not None and L) else None
        state = None if self.less_H is None else (
            lambda qg: self.less_maps.state_terms(qg, self.less_H, self.less_z, q.shape[1]))
        out, sc_past, sc_new = self._attend_rows(q, self.keys if L else None, self.values if L else None, mpast,
                                                 k_new, v_new, mnew, scaling, state=state,
                                                 sums=self.evictor.needs_scores)
        vis_past = mpast[:, :, -1, :] if mpast is not None else None
        return out, sc_past, sc_new, vis_past, mnew[:, :, -1, :]

    # ---- eviction -----------------------------------------------------------------------------------
    def _append_and_evict(self, k_new, v_new, sc_new, vis_past, vis_new):
        B, hkv, n, D = k_new.shape
        dev = k_new.device
        seen = self.cumulative_length
        new_pos = torch.arange(seen, seen + n, device=dev).view(1, 1, n).expand(B, hkv, n)
        self.cumulative_length = seen + n
        L = self.kept_tokens()
        budget = self.evictor.budget
        if L + n <= budget:
            self._cat(k_new, v_new, new_pos, sc_new)
            return
        ev = self.evictor
        if n == 1 and L == budget:
            # one in, one out, in place: the victim is the kept token of lowest priority (the new token is always
            # within the recent window)
            prio = ev.priority(self.pos, self.scores, self.cumulative_length)
            if vis_past is not None:
                prio = prio.masked_fill(~vis_past, float("-inf"))
            victim = prio.argmin(dim=-1, keepdim=True)  # (B, Hkv, 1)
            vidx = victim.unsqueeze(-1).expand(B, hkv, 1, D)
            if self.less_maps is not None:
                vk = torch.gather(self.keys, 2, vidx)
                vv = torch.gather(self.values, 2, vidx)
                w = None if vis_past is None else torch.gather(vis_past, 2, victim)
                self._fold(vk, vv, w)
            self.keys.scatter_(2, vidx, k_new)
            self.values.scatter_(2, vidx, v_new)
            self.pos = self.pos.scatter(2, victim, new_pos)
            if self.scores is not None:
                self.scores = self.scores.scatter(2, victim, sc_new)
            return
        # general: concatenate, keep the `budget` tokens of highest priority
        self._cat(k_new, v_new, new_pos, sc_new)
        prio = ev.priority(self.pos, self.scores, self.cumulative_length)
        vis = vis_new if L == 0 else (
            torch.cat([vis_past if vis_past is not None else torch.ones_like(self.pos[..., :L], dtype=torch.bool),
                       vis_new], dim=-1))
        prio = prio.masked_fill(~vis, float("-inf"))
        keep = prio.topk(budget, dim=-1).indices.sort(dim=-1).values  # (B, Hkv, budget)
        if self.less_maps is not None:
            gone = torch.ones_like(self.pos, dtype=torch.bool).scatter_(2, keep, False) & vis
            self._fold(self.keys, self.values, gone)
        kidx = keep.unsqueeze(-1).expand(B, hkv, budget, D)
        self.keys = torch.gather(self.keys, 2, kidx)
        self.values = torch.gather(self.values, 2, kidx)
        self.pos = torch.gather(self.pos, 2, keep)
        if self.scores is not None:
            self.scores = torch.gather(self.scores, 2, keep)

    def _cat(self, k_new, v_new, new_pos, sc_new):
        if self.keys is None or self.keys.numel() == 0:
            self.keys, self.values, self.pos = k_new.contiguous(), v_new.contiguous(), new_pos.contiguous()
            self.scores = sc_new
            return
        self.keys = torch.cat([self.keys, k_new], dim=2)
        self.values = torch.cat([self.values, v_new], dim=2)
        self.pos = torch.cat([self.pos, new_pos], dim=2)
        if self.scores is not None:
            self.scores = torch.cat([self.scores, sc_new], dim=2)

    def _fold(self, k, v, weight):
        """LESS: H += psi(k)^T v, z += psi(k)^T over the evicted tokens (weight: (B, Hkv, l) bool or None)."""
        psi = self.less_maps.psi(k)  # (B, Hkv, l, R) float32
        if weight is not None:
            psi = psi * weight.unsqueeze(-1).to(psi.dtype)
        dH = psi.transpose(-1, -2) @ v.float()
        dz = psi.sum(2)
        if self.less_H is None:
            self.less_H, self.less_z = dH, dz
        else:
            self.less_H = self.less_H + dH
            self.less_z = self.less_z + dz


# ---- the attention function registered with transformers ---------------------------------------------------
def kv_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention implementation ``"llmeff_kvcache"``: the policy layer attends; without one (no cache, or a
    module outside the policy) it is transformers' sdpa attention."""
    layer = getattr(module, "_llmeff_kv_layer", None)
    if layer is None or layer._pending is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    out = layer.attend(module, query, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


_REGISTERED = False


def register() -> str:
    """Register ``"llmeff_kvcache"`` with transformers' attention and mask interfaces (once)."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTN_NAME, kv_attention)
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
        _REGISTERED = True
    return ATTN_NAME
