"""ABMIL (gated attention) and the omics-only SNN: layer values, heads and input checks."""

from __future__ import annotations

import pytest
import torch
from test_train import FEAT_DIM, info_for, make_bags

from histokd_core.bag import DataInfo
from histokd_core.errors import ConfigError, DataError
from histokd_core.methods.baselines import Config, abmil, snn, stages
from histokd_core.methods.baselines.abmil import GatedAttention
from histokd_core.survival.losses import cox_nll, discrete_risk


def test_gated_attention_hand_computed():
    torch.manual_seed(0)
    layer = GatedAttention(3, hidden=2, dropout=0.0).eval()
    h = torch.randn(5, 3)
    v = torch.tanh(h @ layer.v[0].weight.T + layer.v[0].bias)
    u = torch.sigmoid(h @ layer.u[0].weight.T + layer.u[0].bias)
    scores = (v * u) @ layer.w.weight[0] + layer.w.bias
    expected_a = torch.exp(scores) / torch.exp(scores).sum()
    pooled, a = layer(h)
    assert torch.allclose(a, expected_a, atol=1e-6)
    assert torch.allclose(pooled, (expected_a[:, None] * h).sum(0), atol=1e-6)


def test_abmil_heads_and_losses():
    bags = make_bags(6, 0)
    model = abmil.build(info_for()).eval()
    pred = model.predict(bags[0])
    assert pred.risk.shape == () and pred.attention.shape == (bags[0].feats.shape[0],)
    assert float(pred.attention.sum()) == pytest.approx(1.0, abs=1e-6)
    loss = model.loss(bags)["loss"]
    risks = torch.stack([model.predict(b).risk for b in bags])
    expected = cox_nll(
        risks, torch.tensor([b.time for b in bags]), torch.tensor([b.event for b in bags])
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)

    info = DataInfo(task="survival", feat_dim=FEAT_DIM, n_classes=4)
    discrete = abmil.build(info, survival_loss="nll").eval()
    for i, b in enumerate(bags):
        b.bin = i % 4
    p = discrete.predict(bags[0])
    assert p.logits.shape == (4,) and float(p.risk) == pytest.approx(float(discrete_risk(p.logits)))
    assert torch.isfinite(discrete.loss(bags)["loss"])
    bags[0].bin = -1
    with pytest.raises(DataError, match="bin"):
        discrete.loss(bags)

    cls = abmil.build(info_for("classification")).eval()
    assert cls.predict(bags[0]).logits.shape == (2,)
    with pytest.raises(DataError, match="label"):
        cls.loss(bags)  # survival bags have label -1


def test_snn_needs_omics_and_init():
    bags = make_bags(4, 1)
    model = snn.build(info_for())
    w = model.encoder[0].weight
    assert float(w.std()) == pytest.approx(1 / w.shape[1] ** 0.5, rel=0.5)
    assert model.needs_omics and not abmil.build(info_for()).needs_omics
    bags[2].omics = None
    with pytest.raises(DataError, match="no omics"):
        model.loss(bags)
    with pytest.raises(DataError, match="n_genes = 0"):
        snn.build(DataInfo(task="survival", feat_dim=FEAT_DIM))


def test_baselines_method_stages():
    names = [s.name for s in stages(Config())]
    assert names == ["abmil", "omics_only"]
    assert isinstance(stages(Config(models=("abmil",)))[0].build(info_for(), {}), abmil.ABMIL)
    with pytest.raises(ConfigError):
        Config(models=("transmil",))
