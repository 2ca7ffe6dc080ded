"""Shared fixtures: the real HORM sample shard and tiny model settings (float32 unless a test asks)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import lmdb
import pytest
import torch

#: The real 100-molecule HORM shard, read in place (``../shared/horm`` next to the repository).
HORM_SAMPLE = Path(os.environ.get("HIP_HORM_SAMPLE",
                                  Path(__file__).resolve().parents[2] / "shared" / "horm" / "sample_100.lmdb"))

#: A tiny HIP-EquiformerV2 for tests: seconds per forward on 2 CPU cores.
TINY_MODEL = dict(num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
                  attn_value_channels=4, ffn_hidden_channels=8, lmax=2, mmax=2, grid_resolution=10,
                  num_sphere_samples=16, edge_channels=8, num_layers_hessian=1, avg_degree=10.0)


def read_horm_entries(indices) -> list:
    """Raw pickled HORM entries of the sample shard (independent of hip's dataset code)."""
    env = lmdb.open(str(HORM_SAMPLE), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        entries = [pickle.loads(txn.get(str(i).encode())) for i in indices]
    env.close()
    return entries


@pytest.fixture(autouse=True, scope="module")
def _close_shards_after_module():
    """py-lmdb opens a file once per process: leave no shard open for other test modules."""
    yield
    from hip.data.horm import close_shards

    close_shards()


@pytest.fixture(scope="session")
def horm_sample_path() -> Path:
    if not HORM_SAMPLE.exists():
        pytest.skip(f"HORM sample shard not found at {HORM_SAMPLE}")
    return HORM_SAMPLE


@pytest.fixture(scope="session")
def horm_molecules(horm_sample_path):
    """(atomic numbers [N], positions [N, 3] Å) of three sample molecules of different sizes."""
    entries = read_horm_entries([83, 0, 1])
    return [(e.charges.long(), e.pos.float()) for e in entries]


@pytest.fixture
def float64():
    """Run a test in float64 (fairchem's Wigner matrices follow the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
