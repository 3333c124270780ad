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


def _reference(x: torch.Tensor, k: int, density: torch.Tensor | None = None):
    """Vectorised brute force in float64 (the definition, one full distance matrix)."""
    x = x.double()
    n, d = x.shape
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / d**0.5
    if density is None:
        nn_d = (dist + torch.diag(torch.full((n,), float("inf"), dtype=x.dtype))).topk(k, largest=False).values
        density = torch.exp(-(nn_d**2).mean(1))
    density = density.double()
    i = torch.arange(n)
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (i[None, :] < i[:, None])
    )
    xi = torch.where(denser, dist, torch.full_like(dist, float("inf"))).min(1).values
    top = ~denser.any(1)
    xi[top] = dist[top].max(1).values
    return density, xi, dist


def _clustered(n: int, seed: int, dim: int = 32, latent: int = 4) -> torch.Tensor:
    """Gaussian blobs on a low-dimensional manifold in ``dim`` dimensions, plus noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, latent, generator=g) * 4
    z = centres[torch.randint(0, 6, (n,), generator=g)] + torch.randn(n, latent, generator=g)
    return z @ torch.randn(latent, dim, generator=g) + 0.05 * torch.randn(n, dim, generator=g)


@pytest.mark.parametrize("seed,n,k,chunk", [(0, 400, 5, 64), (1, 257, 3, 1000), (2, 300, 8, 7)])
def test_blocked_exact_path_matches_the_definition_on_larger_bags(seed, n, k, chunk):
    x = _clustered(n, seed) if seed != 1 else torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
    rho, xi, dist = _reference(x, k)
    cl = dpc_knn(x, 3, k=k, chunk=chunk)
    np.testing.assert_allclose(cl.density.numpy(), rho.numpy(), rtol=1e-4)
    np.testing.assert_allclose(cl.distance.numpy(), xi.numpy(), rtol=1e-3, atol=1e-5)
    expected = (rho * xi).topk(3).indices
    assert cl.centres.tolist() == expected.tolist()
    assert cl.assignment.tolist() == [
        c if i not in expected.tolist() else expected.tolist().index(i)
        for i, c in enumerate(dist[:, expected].argmin(1).tolist())
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_approximate_path_has_exact_centres_for_its_density_and_high_recall(seed):
    n, k = 3000, 5
    x = _clustered(n, seed)
    cl = dpc_knn(x, 4, k=k, exact_limit=100)  # force the KD-tree path
    # centres and their relative distances are exact given the density it computed
    _, xi, dist = _reference(x, k, density=cl.density)
    assert cl.centres.tolist() == (cl.density.double() * xi).topk(4).indices.tolist()
    np.testing.assert_allclose(cl.distance[cl.centres].numpy(), xi[cl.centres].numpy(), rtol=1e-3)
    # elsewhere the relative distance is an upper bound
    assert (cl.distance.double() >= xi * (1 - 1e-4)).all()  # float32 distances
    # the density is close to the exact one (neighbour recall on a low-dimensional manifold)
    rho, _, _ = _reference(x, k)
    rel = (cl.density.double() - rho).abs() / rho
    assert float(rel.median()) < 1e-6 and float((rel < 1e-4).double().mean()) > 0.95
    assert (cl.density.double() <= rho + 1e-6).all()  # missed neighbours only lower the density
    assert cl.assignment.tolist() == torch.where(
        torch.isin(torch.arange(n), cl.centres),
        torch.tensor([cl.centres.tolist().index(i) if i in cl.centres.tolist() else -1 for i in range(n)]),
        dist[:, cl.centres].argmin(1),
    ).tolist()
