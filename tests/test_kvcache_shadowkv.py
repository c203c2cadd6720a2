"""llmeff.kvcache.ShadowKV on tiny random Llama and Mistral models (CPU)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from transformers import DynamicCache  # noqa: E402

from llmeff import kvcache  # noqa: E402
from llmeff.kvcache import ShadowKV  # noqa: E402
from llmeff.models import cache_keyword  # noqa: E402

from test_kvcache_policies import V, batch, gen, max_score_diff, tiny  # noqa: E402

FULL_RANK = 2 * 16  # Hkv * head_dim of the tiny models


@pytest.mark.parametrize("kind", ["llama", "mistral"])
@pytest.mark.parametrize("outliers", [0, 2])
def test_full_rank_full_budget_equals_full_attention(kind, outliers):
    m = tiny(kind)
    ref = gen(m, new=10)
    out = gen(m, ShadowKV(budget=1024, rank=FULL_RANK, local_window=4, outlier_chunks=outliers), new=10)
    assert torch.equal(out.sequences, ref.sequences)
    assert max_score_diff(out, ref) < 1e-4


def test_low_rank_small_budget_really_compresses():
    m = tiny()
    ids, am = batch(T=96)
    pol = ShadowKV(budget=16, rank=6, chunk=8, local_window=8, outlier_chunks=2)
    with torch.no_grad(), kvcache.apply(m, pol):
        cache = DynamicCache(config=m.config)
        m(input_ids=ids, attention_mask=am, **{cache_keyword(m): cache}, use_cache=True)
        for _ in range(3):
            am = torch.cat([am, torch.ones(2, 1, dtype=am.dtype)], 1)
            m(input_ids=torch.randint(0, V, (2, 1)), attention_mask=am, **{cache_keyword(m): cache}, use_cache=True)
    B, hk, D = 2, 2, 16
    for lay in cache.layers:
        assert lay.A.shape == (B, 88, 6) and lay.Bf.shape == (B, 6, hk * D)
        assert lay.landmarks.shape == (B, hk, 11, D)
        # exact on device: 2 outlier chunks + 8 local tokens + 3 generated
        assert lay.keys.shape == (B, hk, 2 * 8 + 8 + 3, D)
        assert lay.v_host.shape == (B, hk, 88, D)
        assert lay.get_seq_length() == 99
    mem = kvcache.cache_memory(cache)
    full_bytes = 2 * 2 * B * hk * 99 * D * 4
    assert mem["device"] < 0.6 * full_bytes
    assert mem["host"] == 2 * B * hk * 88 * D * 4


def test_landmark_selection_finds_the_chunk_the_query_points_to():
    """With a query equal to one chunk's keys, that chunk is selected."""
    from llmeff.kvcache.shadowkv import ShadowKVLayer

    lay = ShadowKVLayer(ShadowKV(budget=8, chunk=8, outlier_chunks=0), None, None)
    torch.manual_seed(0)
    B, hk, C, D = 1, 2, 6, 16
    lay.landmarks = torch.randn(B, hk, C, D)
    lay.outlier = torch.zeros(B, hk, C, dtype=torch.bool)
    q = (lay.landmarks[:, :, 4] * 10).unsqueeze(2).repeat_interleave(2, 1)  # 4 query heads, group of 2
    top = lay._select(q.reshape(B, 4, 1, D))
    assert top.shape == (B, hk, 1) and (top == 4).all()


def test_unrope_inverts_rope():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from llmeff.kvcache.shadowkv import _unrope

    m = tiny()
    k = torch.randn(2, 2, 30, 16)
    pos = torch.arange(30)[None].expand(2, 30)
    cos, sin = m.model.rotary_emb(k, pos)
    _, kr = apply_rotary_pos_emb(k, k, cos, sin)
    assert torch.allclose(_unrope(kr, cos, sin), k, atol=1e-5)
