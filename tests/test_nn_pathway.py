"""Sparse pathway MLP: exact sparsity and equality with per-pathway dense SNN blocks."""

import pytest
import torch
import torch.nn.functional as F

from histokd_core.errors import DataError
from histokd_core.nn.pathway import PathwayEncoder

PATHWAYS = [[0, 1, 2], [2, 5, 7, 8], [9], [3, 4, 6, 1]]


def test_token_ignores_non_member_genes():
    torch.manual_seed(0)
    enc = PathwayEncoder(12, PATHWAYS, dim=8, hidden=6).eval()
    x = torch.randn(12)
    base = enc(x)
    x2 = x.clone()
    x2[10] += 5.0  # gene 10 belongs to no pathway
    x2[0] += 5.0  # gene 0 belongs to pathway 0 only
    out = enc(x2)
    torch.testing.assert_close(out[1:], base[1:])
    assert not torch.allclose(out[0], base[0])


def test_matches_per_pathway_dense_reference_and_batches():
    torch.manual_seed(1)
    enc = PathwayEncoder(12, PATHWAYS, dim=5, hidden=4).eval()
    x = torch.randn(3, 12)
    out = enc(x)
    assert out.shape == (3, len(PATHWAYS), 5)
    start = 0
    for i, genes in enumerate(PATHWAYS):
        w1 = enc.w1[start : start + len(genes)]  # (|g_i|, h)
        start += len(genes)
        h = F.elu(x[:, genes] @ w1 + enc.b1[i])
        ref = F.elu(h @ enc.w2[i] + enc.b2[i])
        torch.testing.assert_close(out[:, i], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc(x[1]), out[1])


@pytest.mark.parametrize(
    "pathways, msg", [([[0], []], "no measured"), ([[0, 12]], "outside"), ([], "gene sets")]
)
def test_bad_pathways_raise(pathways, msg):
    with pytest.raises(DataError, match=msg):
        PathwayEncoder(12, pathways)


def test_wrong_omics_width_raises():
    enc = PathwayEncoder(12, PATHWAYS, dim=4, hidden=4)
    with pytest.raises(DataError, match="11 genes"):
        enc(torch.randn(11))
