"""DPC-KNN against a brute-force (pure Python loops) reference."""

import math

import numpy as np
import pytest
import torch

from histokd_core.nn.dpc_knn import dpc_knn, merge_tokens


def brute_force(x: np.ndarray, n_clusters: int, k: int):
    n, d = x.shape
    dist = [
        [math.sqrt(sum((x[i, c] - x[j, c]) ** 2 for c in range(d)) / d) for j in range(n)]
        for i in range(n)
    ]
    rho = []
    for i in range(n):
        others = sorted(dist[i][j] for j in range(n) if j != i)[:k]
        rho.append(math.exp(-sum(v * v for v in others) / len(others)))
    xi = []
    for i in range(n):
        denser = [j for j in range(n) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        xi.append(min(dist[i][j] for j in denser) if denser else max(dist[i]))
    score = [r * e for r, e in zip(rho, xi)]
    centres = sorted(range(n), key=lambda i: -score[i])[:n_clusters]
    assign = [min(range(len(centres)), key=lambda c: dist[i][centres[c]]) for i in range(n)]
    for c, i in enumerate(centres):
        assign[i] = c
    return np.array(rho), np.array(xi), centres, assign


@pytest.mark.parametrize("seed,n,k,n_clusters", [(0, 12, 3, 2), (1, 25, 5, 4), (2, 7, 5, 3)])
def test_matches_brute_force(seed, n, k, n_clusters):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, (n // 2, 3)), rng.normal(4, 1, (n - n // 2, 3))])
    rho, xi, centres, assign = brute_force(x, n_clusters, k)
    cl = dpc_knn(torch.tensor(x, dtype=torch.float64).float(), n_clusters, k=k, chunk=5)
    np.testing.assert_allclose(cl.density.numpy(), rho, rtol=1e-4)
    np.testing.assert_allclose(cl.distance.numpy(), xi, rtol=1e-4)
    assert cl.centres.tolist() == centres
    assert cl.assignment.tolist() == assign


def test_two_blobs_get_one_centre_each():
    rng = np.random.default_rng(3)
    blobs = np.concatenate([rng.normal(0, 0.1, (20, 4)), rng.normal(5, 0.1, (20, 4))])
    x = torch.tensor(blobs, dtype=torch.float32)
    cl = dpc_knn(x, 2, k=5)
    assert sorted(c // 20 for c in cl.centres.tolist()) == [0, 1]
    assert len(set(cl.assignment[:20].tolist())) == 1 and len(set(cl.assignment[20:].tolist())) == 1


def test_single_token_and_more_clusters_than_tokens():
    cl = dpc_knn(torch.ones(1, 3), 4)
    assert cl.centres.tolist() == [0] and cl.assignment.tolist() == [0]


def test_merge_tokens_weighted_mean():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [10.0, 10.0]])
    w = torch.tensor([1.0, 3.0, 2.0])
    out = merge_tokens(x, torch.tensor([0, 0, 1]), w, 2)
    expected = torch.tensor([[(1 * 1 + 3 * 3) / 4, (0 + 3 * 2) / 4], [10.0, 10.0]])
    torch.testing.assert_close(out, expected)
