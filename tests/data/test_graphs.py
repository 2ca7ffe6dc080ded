"""Radius graphs, Hessian scatter indices and collation (hip.data.graphs), against explicit loops."""

from __future__ import annotations

import pytest
import torch

from hip.data.graphs import block_scatter_index, build_molecule_graph, collate, radius_graph, split_hessian


def random_molecule(n: int, box: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n atoms uniformly in a cube of side ``box`` Å, no two closer than 0.5 Å; float64."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        pos = torch.rand(n, 3, generator=gen, dtype=torch.float64) * box
        d = torch.cdist(pos, pos) + 1e9 * torch.eye(n, dtype=torch.float64)
        if n == 1 or d.min() > 0.5:
            z = torch.tensor([1, 6, 7, 8])[torch.randint(4, (n,), generator=gen)]
            return z, pos


def brute_force_edges(pos: torch.Tensor, cutoff: float) -> dict[int, list[tuple[float, int]]]:
    """target → sorted [(distance, source)] within the cutoff, by explicit loops."""
    n = len(pos)
    out = {}
    for t in range(n):
        near = []
        for s in range(n):
            d = float(torch.linalg.vector_norm(pos[s] - pos[t]))
            if s != t and d < cutoff:
                near.append((d, s))
        out[t] = sorted(near)
    return out


@pytest.mark.parametrize(("n", "seed"), [(25, 0), (25, 1), (40, 2)])  # cdist switches method above 25
def test_radius_graph_matches_brute_force(n, seed):
    _, pos = random_molecule(n, box=7.0, seed=seed)
    cutoff = 3.0
    ref = brute_force_edges(pos, cutoff)
    edge_index = radius_graph(pos, cutoff)
    edges = set(map(tuple, edge_index.T.tolist()))
    assert edges == {(s, t) for t, near in ref.items() for _, s in near}
    assert len(edges) == edge_index.shape[1]  # no duplicates
    assert all(s != t for s, t in edges)  # no self-loops
    assert all((t, s) in edges for s, t in edges)  # both directions
    assert 0 < len(edges) < n * (n - 1)  # the cutoff matters in this test
    # sorted by target, then by distance
    src, dst = edge_index
    assert torch.all(dst[1:] >= dst[:-1])
    dist = (pos[src] - pos[dst]).norm(dim=1)
    same = dst[1:] == dst[:-1]
    assert torch.all(dist[1:][same] >= dist[:-1][same])


@pytest.mark.parametrize("max_neighbors", [1, 4, 10])
def test_radius_graph_max_neighbors_keeps_nearest(max_neighbors):
    _, pos = random_molecule(25, box=6.0, seed=3)
    cutoff = 4.0
    ref = brute_force_edges(pos, cutoff)
    edge_index = radius_graph(pos, cutoff, max_neighbors)
    for t, near in ref.items():
        kept = edge_index[0, edge_index[1] == t].tolist()
        assert len(kept) == min(max_neighbors, len(near))
        kept_d = sorted(d for d, s in near if s in kept)
        dropped_d = [d for d, s in near if s not in kept]
        # the kept sources are the nearest ones (ties in distance could go either way)
        assert not dropped_d or max(kept_d) <= min(dropped_d)
        assert kept_d == [d for d, _ in near[: len(kept)]]


def test_hessian_graph_has_edges_the_capped_backbone_lacks():
    z, pos = random_molecule(30, box=5.0, seed=4)
    g = build_molecule_graph(z, pos, cutoff=12.0, max_neighbors=5, cutoff_hessian=12.0)
    backbone = set(map(tuple, g.edge_index.T.tolist()))
    hessian = set(map(tuple, g.edge_index_hessian.T.tolist()))
    assert len(hessian) == 30 * 29  # every pair is within 12 Å, and the Hessian graph has no cap
    assert len(backbone) == 30 * 5
    assert backbone < hessian
    # with the cap the backbone is not symmetric: (s, t) present does not imply (t, s)
    assert any((t, s) not in backbone for s, t in backbone)


def test_block_scatter_index_formula():
    rows, cols, n = torch.tensor([0, 2]), torch.tensor([1, 2]), 3
    idx = block_scatter_index(rows, cols, n)
    assert idx.shape == (2, 18)
    for k, (i, j) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        for a in range(3):
            for b in range(3):
                assert idx[0, 9 * k + 3 * a + b] == (3 * i + a) * 3 * n + (3 * j + b)
                assert idx[1, 9 * k + 3 * a + b] == (3 * j + b) * 3 * n + (3 * i + a)


def test_scatter_indices_assemble_blocks_like_an_explicit_loop():
    """Batch of molecules of different sizes: one index_add_ over the flat batch Hessian equals
    writing each edge block M to (i, j) and Mᵀ to (j, i) (and node blocks M + Mᵀ to (i, i)) in
    per-molecule dense matrices, concatenated flat; the result is symmetric."""
    sizes = [5, 1, 9, 3, 12]
    graphs = []
    for seed, n in enumerate(sizes):
        z, pos = random_molecule(n, box=4.0, seed=10 + seed)
        graphs.append(build_molecule_graph(z, pos, cutoff=3.0, max_neighbors=4, cutoff_hessian=2.5))
    batch = collate(graphs)
    n_total, e_h = sum(sizes), batch.edge_index_hessian.shape[1]
    assert batch.hessian_edge_scatter.shape == (2, 9 * e_h)
    assert batch.hessian_node_scatter.shape == (2, 9 * n_total)
    assert e_h < sum(n * (n - 1) for n in sizes)  # some pairs are beyond the Hessian cutoff

    gen = torch.Generator().manual_seed(0)
    m_edge = torch.randn(e_h, 3, 3, generator=gen, dtype=torch.float64)
    m_node = torch.randn(n_total, 3, 3, generator=gen, dtype=torch.float64)

    # as the model assembles: one index_add_ for all blocks of the batch
    scatter = torch.cat([batch.hessian_edge_scatter, batch.hessian_node_scatter], dim=1)
    blocks = torch.cat([m_edge, m_node]).reshape(-1)
    flat = torch.zeros(sum(9 * n * n for n in sizes), dtype=torch.float64)
    flat.index_add_(0, scatter.reshape(-1), torch.cat([blocks] * 2))

    # reference: explicit per-block loop in per-molecule dense matrices
    ptr = batch.ptr.tolist()
    dense = [torch.zeros(3 * n, 3 * n, dtype=torch.float64) for n in sizes]
    for k, (s, t) in enumerate(batch.edge_index_hessian.T.tolist()):
        b = int(batch.batch[s])
        assert int(batch.batch[t]) == b  # edges never cross molecules
        i, j = s - ptr[b], t - ptr[b]
        dense[b][3 * i : 3 * i + 3, 3 * j : 3 * j + 3] += m_edge[k]
        dense[b][3 * j : 3 * j + 3, 3 * i : 3 * i + 3] += m_edge[k].T
    for node in range(n_total):
        b = int(batch.batch[node])
        i = node - ptr[b]
        dense[b][3 * i : 3 * i + 3, 3 * i : 3 * i + 3] += m_node[node] + m_node[node].T
    reference = torch.cat([d.reshape(-1) for d in dense])
    torch.testing.assert_close(flat, reference, rtol=0, atol=1e-12)

    for h, n, g in zip(split_hessian(flat, batch.natoms), sizes, graphs, strict=True):
        torch.testing.assert_close(h, h.T, rtol=0, atol=1e-12)
        # blocks of atom pairs beyond the Hessian cutoff stay zero
        linked = torch.eye(n, dtype=torch.bool)
        linked[g.edge_index_hessian[0], g.edge_index_hessian[1]] = True
        zero_blocks = (~linked).repeat_interleave(3, 0).repeat_interleave(3, 1)
        assert torch.all(h[zero_blocks] == 0)


def test_collate_shifts_indices_per_molecule():
    graphs = [build_molecule_graph(*random_molecule(n, 3.0, seed=n), cutoff=5.0, max_neighbors=None,
                                   cutoff_hessian=5.0) for n in (4, 7)]
    batch = collate(graphs)
    assert batch.natoms.tolist() == [4, 7]
    assert torch.equal(batch.edge_index_hessian[:, graphs[0].edge_index_hessian.shape[1]:],
                       graphs[1].edge_index_hessian + 4)
    assert torch.equal(batch.hessian_node_scatter[:, 9 * 4:], graphs[1].hessian_node_scatter + 9 * 16)
    assert torch.equal(batch.hessian_edge_scatter[:, graphs[0].hessian_edge_scatter.shape[1]:],
                       graphs[1].hessian_edge_scatter + 9 * 16)


def test_split_hessian_round_trip():
    sizes = [2, 5, 1]
    mats = [torch.randn(3 * n, 3 * n) for n in sizes]
    flat = torch.cat([m.reshape(-1) for m in mats])
    parts = split_hessian(flat, torch.tensor(sizes))
    assert [p.shape for p in parts] == [(3 * n, 3 * n) for n in sizes]
    for p, m in zip(parts, mats, strict=True):
        assert torch.equal(p, m)
    assert torch.equal(torch.cat([p.reshape(-1) for p in parts]), flat)
    parts[0][0, 0] = 123.0  # views of the flat tensor
    assert flat[0] == 123.0
    with pytest.raises(ValueError, match="natoms"):
        split_hessian(flat[:-1], sizes)


def test_build_molecule_graph_errors_name_where_and_field():
    z, pos = random_molecule(3, 3.0, seed=0)
    with pytest.raises(ValueError, match=r"ctx: field 'hessian'"):
        build_molecule_graph(z, pos, cutoff=5.0, max_neighbors=None, cutoff_hessian=5.0, where="ctx",
                             hessian=torch.zeros(80))
    pos[1] = pos[0] + 0.01
    with pytest.raises(ValueError, match=r"ctx: field 'pos' has atoms 0 and 1"):
        build_molecule_graph(z, pos, cutoff=5.0, max_neighbors=None, cutoff_hessian=5.0, where="ctx")
