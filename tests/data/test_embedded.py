"""The committed embedded dataset: valid HORM-format entries, batches, and what the data card promises."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from hip.data import GraphBuilder, HormDataset, collate
from hip.data.horm import close_shards

EMBEDDED = Path(__file__).resolve().parents[2] / "data" / "embedded"


@pytest.fixture(scope="module")
def splits():
    datasets = {name: HormDataset(EMBEDDED / f"{name}.lmdb", GraphBuilder(), skip_invalid=False)
                for name in ("train", "val")}
    yield datasets
    close_shards()


def test_every_entry_is_valid_and_the_set_is_as_documented(splits):
    """≥ 60 geometries of ≥ 15 distinct H/C/N/O molecules with 3–9 atoms, labels in HORM units."""
    formulas, total = Counter(), 0
    for dataset in splits.values():
        for i in range(len(dataset)):
            graph = dataset[i]
            total += 1
            assert 3 <= graph.natoms <= 9
            assert set(graph.z.tolist()) <= {1, 6, 7, 8}
            assert graph.hessian.numel() == 9 * int(graph.natoms) ** 2
            counts = Counter(graph.z.tolist())
            formulas[tuple(sorted(counts.items()))] += 1
            # HORM's `ae` convention: |ae| of a few eV, not the ~−1000s of eV of total energies
            assert abs(float(graph.ae)) < 50 and float(graph.energy) < -100
    assert total >= 60
    assert len(formulas) >= 15


def test_batches_of_eight(splits):
    dataset = splits["train"]
    batch = collate([dataset[i] for i in range(8)])
    n = int(batch.natoms.sum())
    assert batch.pos.shape == (n, 3) and batch.forces.shape == (n, 3)
    assert batch.natoms.shape == (8,) and batch.ae.shape == (8,)
    assert batch.hessian.shape == (int((9 * batch.natoms**2).sum()),)
    assert batch.hessian_node_scatter.shape == (2, 9 * n)
    assert batch.hessian_edge_scatter.shape == (2, 9 * batch.edge_index_hessian.shape[1])
    assert int(batch.hessian_edge_scatter.max()) < batch.hessian.numel()
    assert torch.isfinite(batch.hessian).all()
