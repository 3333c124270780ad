"""kNN patch graph (against brute force and sklearn) and the GATv2 graph encoder."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import kneighbors_graph

from histokd_core.errors import DataError
from histokd_core.nn.graph import GATv2Encoder, bag_graph, knn_graph


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def brute_force_neighbours(coords: np.ndarray, k: int) -> list[set[int]]:
    d = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return [set(np.argsort(row, kind="stable")[:k].tolist()) for row in d]


def neighbour_sets(edge_index: torch.Tensor, n: int) -> list[set[int]]:
    out: list[set[int]] = [set() for _ in range(n)]
    for i, j in edge_index.T.tolist():
        out[i].add(j)
    return out


def test_knn_graph_matches_brute_force_and_sklearn():
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 10_000, size=(300, 2))  # no distance ties
    edges = knn_graph(coords, k=8)
    assert edges.shape == (2, 300 * 8) and edges.dtype == torch.long
    assert neighbour_sets(edges, 300) == brute_force_neighbours(coords, 8)
    ref = np.stack(kneighbors_graph(coords, 8, mode="connectivity", include_self=False).nonzero())
    assert {tuple(e) for e in ref.T.tolist()} == {tuple(e) for e in edges.T.tolist()}
    assert not (edges[0] == edges[1]).any()


def test_knn_graph_on_a_patch_lattice_interior_nodes_get_their_8_ring():
    xs, ys = np.meshgrid(np.arange(10) * 256, np.arange(10) * 256)
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    sets = neighbour_sets(knn_graph(torch.from_numpy(coords), 8), 100)
    centre = 5 * 10 + 5
    expected = {(5 + dy) * 10 + (5 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)} - {centre}
    assert sets[centre] == expected


def test_knn_graph_small_and_duplicate_inputs():
    assert knn_graph(np.zeros((1, 2))).shape == (2, 0)
    four = knn_graph(np.array([[0, 0], [1, 0], [0, 1], [5, 5]]), k=8)
    assert neighbour_sets(four, 4) == [{1, 2, 3}, {0, 2, 3}, {0, 1, 3}, {0, 1, 2}]
    dup = knn_graph(np.zeros((12, 2)), k=8)  # all points identical: never the node itself
    assert dup.shape == (2, 96) and not (dup[0] == dup[1]).any()


def test_knn_graph_rejects_bad_coords():
    with pytest.raises(DataError, match="coords"):
        knn_graph(np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(DataError, match="coords"):
        knn_graph(np.zeros(5))


def test_bag_graph_has_no_edges_across_slides():
    rng = np.random.default_rng(1)
    coords = torch.from_numpy(rng.uniform(0, 1000, size=(40, 2)))
    slide = torch.tensor([0] * 25 + [1] * 15)
    edges = bag_graph(coords, slide, k=8)
    assert edges.shape[1] == 40 * 8
    assert (slide[edges[0]] == slide[edges[1]]).all()
    second = torch.arange(25, 40)
    local = neighbour_sets(knn_graph(coords[second], 8), 15)
    assert [{int(second[j]) for j in s} for s in local] == neighbour_sets(edges, 40)[25:]


def test_knn_graph_50k_patches_has_k_edges_per_patch():
    """Shape and degree at slide scale; its speed is measured in bench/bench_momkd.py."""
    rng = np.random.default_rng(2)
    coords = rng.integers(0, 300, size=(50_000, 2)) * 256 + rng.integers(0, 3, size=(50_000, 2))
    edges = knn_graph(coords, 8)
    assert edges.shape == (2, 400_000)
    assert np.array_equal(np.bincount(np.asarray(edges[0]), minlength=50_000), np.full(50_000, 8))
    assert bool((edges[0] != edges[1]).all())


def test_gatv2_encoder_matches_its_definition():
    torch.manual_seed(0)
    enc = GATv2Encoder(12, dim=16, heads=2, dropout=0.5).eval()
    x = torch.randn(30, 12)
    edges = knn_graph(torch.randn(30, 2), 4)
    out = enc(x, edges)
    h1 = F.elu(enc.norm1(enc.gat1(x, edges))) + enc.residual(x)
    h2 = F.elu(enc.norm2(enc.gat2(h1, edges))) + h1
    assert out.shape == (30, 16)
    torch.testing.assert_close(out, torch.maximum(h1, h2))


def test_gatv2_messages_flow_along_edge_direction_within_two_hops():
    # Chain 0 -> 1 -> 2 -> 3 (sklearn's direction: i lists j, j aggregates from i).
    torch.manual_seed(0)
    enc = GATv2Encoder(4, dim=8, heads=2, dropout=0.0).eval()
    edges = torch.tensor([[0, 1, 2], [1, 2, 3]])
    x = torch.randn(4, 4)
    base = enc(x, edges)
    x2 = x.clone()
    x2[0] += 3.0
    moved = (enc(x2, edges) - base).abs().sum(1) > 1e-6
    assert moved.tolist() == [True, True, True, False]
