"""TransMIL-style WSI-only baseline: Nystrom attention against exact attention, and learning."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import DataError
from histokd_core.methods.baselines.transmil import (
    NystromAttention,
    TransMIL,
    build,
    iterative_pinv,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_iterative_pinv_matches_torch_pinv():
    gen = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(3, 6, 6, generator=gen, dtype=torch.float64), -1)
    expected = torch.linalg.pinv(a)
    torch.testing.assert_close(iterative_pinv(a, iters=30), expected, atol=1e-6, rtol=1e-5)


def test_nystrom_with_one_token_per_landmark_is_exact_attention():
    torch.manual_seed(0)
    attn = NystromAttention(dim=16, heads=2, landmarks=4, pinv_iters=30, dropout=0.0)
    attn = attn.double().eval()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    # 8 tokens, 4 landmarks of 2 tokens each: with pairs of identical tokens the landmarks are the
    # tokens themselves, so the Nystrom approximation is exact
    x = x[:, [0, 0, 1, 1, 2, 2, 3, 3]]
    out, first = attn(x)
    q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
    q, k, v = (t.reshape(1, 8, 2, 8).transpose(1, 2) for t in (q, k, v))
    exact = torch.softmax((q * 8**-0.5) @ k.transpose(-1, -2), -1)
    ref = (exact @ v + attn.res_conv(v)).transpose(1, 2).reshape(1, 8, 16)
    torch.testing.assert_close(out, attn.to_out(ref), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first, exact[:, :, 0], atol=1e-5, rtol=1e-5)


def test_transmil_predicts_any_bag_size_with_attention():
    torch.manual_seed(0)
    model = TransMIL(8).eval()
    for n in (1, 7, 300):
        bag = Bag("c", torch.randn(n, 8), torch.zeros(n, 2, dtype=torch.long), label=1)
        pred = model.predict(bag)
        assert pred.logits.shape == (2,) and pred.attention.shape == (n,)
        assert pred.attention.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert (pred.attention >= 0).all()
    with pytest.raises(DataError, match="classification"):
        build(DataInfo(task="survival", feat_dim=8))
    with pytest.raises(DataError, match="label"):
        model.loss([Bag("c", torch.randn(3, 8), torch.zeros(3, 2, dtype=torch.long))])


def test_transmil_learns_planted_signal():
    gen = torch.Generator().manual_seed(0)

    def bags(n_bags):
        out = []
        for i in range(n_bags):
            feats = torch.randn(30, 8, generator=gen)
            if i % 2:
                feats[:8, 0] += 2.0
            out.append(Bag(f"c{i}", feats, torch.zeros(30, 2, dtype=torch.long), label=i % 2))
        return out

    torch.manual_seed(0)
    model = build(DataInfo(task="classification", feat_dim=8))
    train, test = bags(40), bags(30)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5)
    for _ in range(5):
        model.train()
        for start in range(0, 40, 4):
            out = model.loss(train[start : start + 4])
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        probs = [float(torch.softmax(model.predict(b).logits, -1)[1]) for b in test]
    assert roc_auc_score([b.label for b in test], probs) > 0.85
