"""Deformable attention: exact bilinear sampling, reference grid, attention over padding."""

import torch

from histokd_core.nn.deformable import DeformableAttention2D, reference_points, sample_points


def test_sample_exact_at_integer_points_and_bilinear_between():
    fmap = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    pts = torch.tensor([[[0.0, 0.0], [3.0, 2.0], [1.0, 2.0], [1.5, 0.5]]])
    out = sample_points(fmap, pts)[0]
    torch.testing.assert_close(out[:, 0], fmap[0, :, 0, 0])
    torch.testing.assert_close(out[:, 1], fmap[0, :, 2, 3])
    torch.testing.assert_close(out[:, 2], fmap[0, :, 2, 1])
    expected = fmap[0, :, 0:2, 1:3].mean(dim=(1, 2))
    torch.testing.assert_close(out[:, 3], expected)
    assert torch.all(sample_points(fmap, torch.tensor([[[-5.0, 0.0]]])) == 0)


def test_reference_grid_is_integer_cells_when_side_equals_map():
    pts = reference_points(4, 4, 4)
    assert pts.shape == (16, 2)
    torch.testing.assert_close(pts[5], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(pts[-1], torch.tensor([3.0, 3.0]))


def test_zero_offset_samples_exact_features_and_attention_matches_manual():
    torch.manual_seed(0)
    c, h, w = 8, 4, 4
    att = DeformableAttention2D(
        c, heads=2, dim_head=4, offset_kernel=3, offset_stride=1, offset_scale=0.0, n_points=4
    )
    kv = torch.randn(c, h, w)
    queries = torch.randn(3, c)
    out, attn, points = att(kv, kv, queries=queries)
    torch.testing.assert_close(points[0], reference_points(h, w, 4))
    sampled = sample_points(kv[None], points)[0].t()
    torch.testing.assert_close(sampled, kv.flatten(1).t())
    q = att.to_q(queries).view(3, 2, 4).transpose(0, 1)
    k = att.to_k(sampled).view(16, 2, 4).transpose(0, 1)
    v = att.to_v(sampled).view(16, 2, 4).transpose(0, 1)
    a = torch.softmax(q @ k.transpose(1, 2) / 2.0, -1)
    torch.testing.assert_close(attn, a)
    torch.testing.assert_close(out, att.to_out((a @ v).transpose(0, 1).reshape(3, 8)))


def test_padding_is_not_attended_and_small_maps_work():
    torch.manual_seed(1)
    att = DeformableAttention2D(
        8, heads=2, dim_head=4, offset_kernel=3, offset_stride=1, offset_scale=0.0, n_points=3
    )
    kv = torch.randn(8, 3, 3)
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[0, :] = False
    _, attn, _ = att(kv, kv, mask, queries=torch.randn(2, 8))
    assert float(attn[..., :3].sum().detach()) < 1e-3
    big = DeformableAttention2D(8, heads=2, dim_head=4)
    out, attn, pts = big(torch.randn(8, 1, 2), torch.randn(8, 1, 2), queries=torch.randn(2, 8))
    assert out.shape == (2, 8) and attn.shape == (2, 2, 144) and torch.isfinite(out).all()


def test_offsets_get_gradients():
    torch.manual_seed(2)
    att = DeformableAttention2D(8, heads=2, dim_head=4, n_points=4)
    kv = torch.randn(8, 10, 10, requires_grad=True)
    out, _, _ = att(kv, kv, queries=torch.randn(5, 8))
    out.sum().backward()
    assert att.to_offsets[0].weight.grad.abs().sum() > 0
