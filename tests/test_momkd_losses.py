"""MoMKD losses, memory and diagnostics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from histokd_core.errors import HistoKDError
from histokd_core.methods.momkd.diagnostics import UsageTracker, active_ratio, perplexity
from histokd_core.methods.momkd.losses import (
    alignment_loss,
    memory_attention,
    memory_loss,
    memory_scores,
    orthogonality,
    soft_similarity,
)
from histokd_core.methods.momkd.memory import ClassMemory, spherical_kmeans

E1 = [1.0, 0.0]
E2 = [0.0, 1.0]


def test_soft_similarity_is_a_scaled_logsumexp():
    z = torch.tensor([E1])
    mem = torch.tensor([E1, E2])
    expected = math.log(math.exp(5.0) + math.exp(0.0)) / 5.0
    assert soft_similarity(z, mem, 5.0).item() == pytest.approx(expected, rel=1e-6)
    # large tau_agg tends to the hard maximum
    assert soft_similarity(z, mem, 500.0).item() == pytest.approx(1.0, abs=1e-3)


def test_alignment_loss_hand_computed_for_both_labels():
    z = torch.tensor([E1, E1])
    mem_pos = torch.tensor([E1, E2])  # phi+ = log(e^5 + 1) / 5
    mem_neg = torch.tensor([E2, [-1.0, 0.0]])  # phi- = log(1 + e^-5) / 5, so Delta = 1 exactly
    delta = (math.log(math.exp(5) + 1) - math.log(1 + math.exp(-5))) / 5
    assert delta == pytest.approx(1.0)
    pos = math.log1p(math.exp(20 * (0.3 - delta)))
    neg = math.log1p(math.exp(20 * (0.3 + delta)))
    got = alignment_loss(z, torch.tensor([1, 0]), mem_pos, mem_neg, tau_agg=5, beta=20, margin=0.3)
    assert got.item() == pytest.approx((pos + neg) / 2, rel=1e-5)
    single = alignment_loss(z[0], 1, mem_pos, mem_neg).item()
    assert single == pytest.approx(pos, rel=1e-3, abs=1e-9)
    # margin and beta enter as softplus(beta * (margin - Delta))
    got = alignment_loss(z[:1], torch.tensor([1]), mem_pos, mem_neg, tau_agg=5, beta=2, margin=1.5)
    assert got.item() == pytest.approx(math.log1p(math.exp(2 * (1.5 - delta))), rel=1e-5)


def test_orthogonality_is_mean_squared_off_diagonal_cosine():
    comps = torch.tensor([[2.0, 0.0], [3.0, 4.0]])  # cosine 0.6, not normalised on purpose
    assert orthogonality(comps).item() == pytest.approx(2 * 0.36 / 4)
    # the public code's form: sum_ij cos^2 / K^2 - 1/K
    assert orthogonality(comps).item() == pytest.approx((2 + 2 * 0.36) / 4 - 1 / 2)
    assert orthogonality(torch.eye(4)).item() == pytest.approx(0.0)


def test_memory_loss_commitment_to_the_nearest_component():
    z = torch.tensor([E1, E2], requires_grad=True)
    comps = torch.tensor([[0.6, 0.8], E1], requires_grad=True)
    out = memory_loss(z, comps, orth_weight=10.0)
    assert out["assign"].tolist() == [1, 0]
    assert out["commit"].item() == pytest.approx((0.36 + 0.04) / 4)
    assert out["orth"].item() == pytest.approx(0.18)
    assert out["loss"].item() == pytest.approx(0.1 + 1.8)


def test_memory_loss_stop_gradient_versus_gradient_codebook():
    z = torch.tensor([E1, E2], requires_grad=True)
    comps = torch.tensor([[0.6, 0.8], E1], requires_grad=True)
    memory_loss(z, comps, orth_weight=0.0)["loss"].backward()
    assert comps.grad is None or torch.count_nonzero(comps.grad) == 0
    torch.testing.assert_close(z.grad, torch.tensor([[0.0, 0.0], [-0.3, 0.1]]))
    z.grad = None
    memory_loss(z, comps, orth_weight=0.0, codebook_grad=True)["loss"].backward()
    torch.testing.assert_close(comps.grad, torch.tensor([[0.3, -0.1], [0.0, 0.0]]))
    torch.testing.assert_close(z.grad, torch.tensor([[0.0, 0.0], [-0.3, 0.1]]))


def test_memory_attention_hand_computed_and_detached_from_memory():
    z = torch.tensor([E1, E2])
    mem_pos = torch.tensor([E1], requires_grad=True)
    mem_neg = torch.tensor([[0.6, 0.8]], requires_grad=True)
    torch.testing.assert_close(memory_scores(z, mem_pos, mem_neg), torch.tensor([0.4, -0.8]))
    attn = memory_attention(z, mem_pos, mem_neg, 0.2)
    e = [math.exp(0.4 / 0.2), math.exp(-0.8 / 0.2)]
    torch.testing.assert_close(attn, torch.tensor([e[0] / sum(e), e[1] / sum(e)]))
    assert not attn.requires_grad  # z has no grad and the memories are detached


def test_ema_update_math():
    mem = ClassMemory(n_components=3, dim=2, mode="ema", momentum=0.5)
    mem.set_components(1, torch.tensor([E1, E2, [-1.0, 0.0]]))
    mem.set_components(0, torch.tensor([E1, E2, [-1.0, 0.0]]))
    before_neg = mem.components[0].clone()
    (assign,) = mem.ema_update([torch.tensor([[0.8, 0.6], [0.6, 0.8]])], label=1)
    assert assign.tolist() == [0, 1]
    expected = torch.stack([
        F.normalize(torch.tensor([0.9, 0.3]), dim=0),
        F.normalize(torch.tensor([0.3, 0.9]), dim=0),
        torch.tensor([-1.0, 0.0]),  # unused component stays
    ])
    torch.testing.assert_close(mem.components[1], expected)
    torch.testing.assert_close(mem.components[0], before_neg)  # other class untouched


def test_ema_mean_of_several_patches_and_other_modes_do_not_move():
    mem = ClassMemory(n_components=1, dim=2, mode="ema", momentum=0.75)
    mem.set_components(0, torch.tensor([E1]))
    mem.ema_update([torch.tensor([[0.6, 0.8], [0.8, 0.6]])], label=0)
    expected = F.normalize(torch.tensor([0.75 + 0.25 * 0.7, 0.25 * 0.7]), dim=0)
    torch.testing.assert_close(mem.components[0, 0], expected)
    for mode in ("gradient", "fixed"):
        m = ClassMemory(n_components=1, dim=2, mode=mode)
        m.set_components(0, torch.tensor([E1]))
        m.ema_update([torch.tensor([E2])], label=0)
        torch.testing.assert_close(m.components[0, 0].detach(), torch.tensor(E1))
    assert isinstance(ClassMemory(2, 2, "gradient").components, torch.nn.Parameter)
    assert "components" in dict(ClassMemory(2, 2, "ema").named_buffers())


def test_ema_gives_each_modality_one_vote():
    """Patches (3 near c0) and one omics projection (near c0 too): c0's target is the mean of the
    patch mean and the omics vector, not of all four vectors; c1 moves towards the omics only."""
    mem = ClassMemory(n_components=2, dim=2, mode="ema", momentum=0.5)
    mem.set_components(1, torch.tensor([E1, E2]))
    patches = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.8, 0.6]])
    omics = torch.tensor([[0.6, 0.8]])
    assigns = mem.ema_update([patches, omics], label=1)
    assert [a.tolist() for a in assigns] == [[0, 0, 0], [1]]
    patch_mean = torch.tensor([2.8 / 3, 0.6 / 3])
    torch.testing.assert_close(mem.components[1, 0], F.normalize(0.5 * torch.tensor(E1) + 0.5 * patch_mean, dim=0))
    torch.testing.assert_close(mem.components[1, 1], F.normalize(torch.tensor([0.3, 0.5 + 0.4]), dim=0))
    mem.set_components(1, torch.tensor([E1, E2]))
    mem.ema_update([patches, torch.tensor([[0.8, 0.6]])], label=1)  # both vote for c0
    target = 0.5 * (patch_mean + torch.tensor([0.8, 0.6]))
    torch.testing.assert_close(mem.components[1, 0], F.normalize(0.5 * torch.tensor(E1) + 0.5 * target, dim=0))
    torch.testing.assert_close(mem.components[1, 1], torch.tensor(E2))


def test_memory_rejects_bad_settings():
    with pytest.raises(HistoKDError, match="mode"):
        ClassMemory(2, 2, mode="momentum")
    with pytest.raises(HistoKDError, match="momentum"):
        ClassMemory(2, 2, momentum=1.0)


def test_spherical_kmeans_recovers_planted_directions():
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    x = torch.cat([c + 0.05 * torch.randn(100, 8, generator=gen) for c in centres])
    found = spherical_kmeans(x, 3, iters=20, generator=gen)
    torch.testing.assert_close(found.norm(dim=1), torch.ones(3))
    best = (centres @ found.T).max(dim=1).values
    assert (best > 0.99).all()
    few = spherical_kmeans(x[:2], 5, generator=gen)  # fewer points than centres
    assert few.shape == (5, 8)


def test_active_ratio_and_perplexity_hand_computed():
    counts = torch.tensor([[5, 0, 5, 0], [1, 1, 1, 1]])
    assert active_ratio(counts) == pytest.approx(6 / 8)
    assert perplexity(counts) == pytest.approx((2.0 + 4.0) / 2)
    assert perplexity(torch.tensor([7, 0, 0])) == pytest.approx(1.0)
    tracker = UsageTracker(4)
    tracker.update(1, torch.tensor([0, 0, 3]))
    summary = tracker.summary()
    assert summary["memory_active_ratio_pos"] == 0.5 and summary["memory_active_ratio_neg"] == 0.0
    p = torch.tensor([2 / 3, 1 / 3])
    assert summary["memory_perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert tracker.counts.sum() == 0  # reset
