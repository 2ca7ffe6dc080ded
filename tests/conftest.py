"""Shared fixtures: the real HORM sample shard and the tiny model of configs/model/tiny.yaml (float32 unless
a test asks). Plain helpers are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import HORM_SAMPLE, TINY_MODEL, read_horm_entries, write_tiny_checkpoint

__all__ = ["HORM_SAMPLE", "TINY_MODEL", "read_horm_entries"]  # also importable from here, as before


@pytest.fixture(autouse=True, scope="module")
def _close_shards_after_module():
    """py-lmdb opens a file once per process: leave no shard open for other test modules."""
    yield
    from hip.data.horm import close_shards

    close_shards()


@pytest.fixture
def tiny_model_config() -> dict:
    """HIPEquiformerV2 keyword arguments of configs/model/tiny.yaml, composed as ``train.py model=tiny``
    composes them (a copy: a test may change it)."""
    return dict(TINY_MODEL)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny model (seed 0) in our checkpoint format, written once per test module."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


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
