"""Memory-bounded attention layers against naive reference implementations."""

import math

import torch

from histokd_core.nn.attention import (
    MultiHeadAttention,
    PathwayPatchAttention,
    SelfAttentionBlock,
    chunked_sdpa,
)


def naive_attention(q, k, v, mask=None):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v


def test_chunked_sdpa_matches_naive_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 29, 8, generator=g, requires_grad=True)
    v = torch.randn(2, 29, 8, generator=g, requires_grad=True)
    out = chunked_sdpa(q, k, v, chunk_size=5)  # 8 chunks, checkpointed
    ref = naive_attention(q, k, v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_multihead_attention_matches_manual_heads():
    torch.manual_seed(1)
    mha = MultiHeadAttention(12, heads=3, dim_head=4, chunk_size=7)
    xq, xkv = torch.randn(20, 12), torch.randn(15, 12)
    q = mha.to_q(xq)
    k, v = mha.to_kv(xkv).chunk(2, -1)
    heads = []
    for h in range(3):
        sl = slice(4 * h, 4 * h + 4)
        heads.append(naive_attention(q[:, sl], k[:, sl], v[:, sl]))
    ref = mha.to_out(torch.cat(heads, -1))
    torch.testing.assert_close(mha(xq, xkv), ref, atol=1e-5, rtol=1e-5)
    w = mha.weights(xq, xkv)
    assert w.shape == (20, 15)
    torch.testing.assert_close(w.sum(1), torch.ones(20))


def test_pathway_patch_attention_equals_masked_full_attention():
    torch.manual_seed(2)
    n_path, n_patch, dim = 6, 23, 16
    layer = PathwayPatchAttention(dim, heads=2, dim_head=8, chunk_size=4).eval()
    g, p = torch.randn(n_path, dim), torch.randn(n_patch, dim)
    out_g, out_p = layer(g, p)
    # reference: attention over all tokens with the patch->patch block masked out
    x = layer.norm(torch.cat([g, p]))
    q = layer.attn.split(layer.attn.to_q(x))
    k, v = (layer.attn.split(t) for t in layer.attn.to_kv(x).chunk(2, -1))
    n = n_path + n_patch
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[n_path:, n_path:] = False
    att = layer.attn.merge(naive_attention(q, k, v, mask))
    ref = layer.norm_out(att + layer.ff(att))
    torch.testing.assert_close(out_g, ref[:n_path], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_p, ref[n_path:], atol=1e-5, rtol=1e-5)
    # a patch's output ignores every other patch (no patch-to-patch attention)
    p2 = p.clone()
    p2[5] = torch.randn(dim) * 3.0
    with torch.no_grad():
        out_g2, out_p2 = layer(g, p2)
    keep = torch.arange(n_patch) != 5
    assert not torch.allclose(out_g2, out_g)  # pathways do see the patches
    torch.testing.assert_close(out_p2[keep], out_p[keep], atol=1e-5, rtol=1e-5)
    maps = layer.pathway_weights(g, p)
    assert maps.shape == (n_path, n_patch)
    torch.testing.assert_close(maps.sum(1), torch.ones(n_path))


def test_self_attention_block_large_bag_bounded_chunks():
    torch.manual_seed(3)
    block = SelfAttentionBlock(8, heads=2, dim_head=4, chunk_size=64).eval()
    x = torch.randn(300, 8)
    small = SelfAttentionBlock(8, heads=2, dim_head=4, chunk_size=10_000).eval()
    small.load_state_dict(block.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(block(x), small(x), atol=1e-5, rtol=1e-5)


def test_nystrom_equals_full_attention_when_every_token_is_a_landmark():
    from histokd_core.nn.attention import nystrom_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 40, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(nystrom_attention(q, k, v, landmarks=40), naive_attention(q, k, v))
    block = SelfAttentionBlock(16, heads=2, dim_head=8, attention="nystrom", landmarks=64).eval()
    full = SelfAttentionBlock(16, heads=2, dim_head=8).eval()
    full.load_state_dict(block.state_dict())  # same parameters: a switch, not another model
    x = torch.randn(50, 16, generator=g)
    torch.testing.assert_close(block(x), full(x))


def test_nystrom_is_exact_when_segments_hold_repeated_tokens():
    """With m segments of g identical tokens the landmarks are the distinct tokens and the
    Nystrom form equals softmax attention (the uniform log g shift cancels); with distinct
    tokens it is only an approximation, so the test checks the kernel algebra, not luck."""
    from histokd_core.nn.attention import nystrom_attention, segment_means

    g = torch.Generator().manual_seed(4)
    m, group = 6, 9
    distinct_q, distinct_k, v = torch.randn(2, m, 4, generator=g), torch.randn(2, m, 4, generator=g), torch.randn(2, m * group, 4, generator=g)
    q, k = distinct_q.repeat_interleave(group, 1), distinct_k.repeat_interleave(group, 1)
    torch.testing.assert_close(segment_means(k, m), distinct_k)
    out = nystrom_attention(q, k, v, landmarks=m, pinv_iters=40)
    torch.testing.assert_close(out, naive_attention(q, k, v), atol=2e-4, rtol=1e-3)
    nq, nk = (t + 0.5 * torch.randn(t.shape, generator=g) for t in (q, k))
    err = (nystrom_attention(nq, nk, v, landmarks=m, pinv_iters=40) - naive_attention(nq, nk, v)).abs().max()
    assert err > 1e-3  # distinct keys: an approximation


def test_segment_means_cover_uneven_lengths():
    from histokd_core.nn.attention import segment_means

    x = torch.arange(7.0).reshape(1, 7, 1)
    # floor(i * 3 / 7): segments {0, 1, 2}, {3, 4}, {5, 6}
    torch.testing.assert_close(segment_means(x, 3)[0, :, 0], torch.tensor([1.0, 3.5, 5.5]))
