"""The autodiff Hessian baseline against finite differences, batched and looped."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_MODEL

from hip import HIPEquiformerV2, collate_molecules, split_hessian
from hip.model.autodiff import autodiff_hessian, finite_difference_hessian, prefers_vectorized


@pytest.mark.slow
def test_autodiff_equals_finite_differences_float64(float64, horm_molecules):
    """fairchem detaches the edge frames, so autograd differentiates at fixed frames: central
    differences at fixed frames must agree to float64 precision (measured max |ΔH| 3e-7 eV/Å² at
    δ = 1e-5 Å, falling as δ²)."""
    torch.manual_seed(0)
    model = HIPEquiformerV2(**TINY_MODEL).eval()
    molecules = [(z, pos.double()) for z, pos in horm_molecules[:2]]
    batch = collate_molecules(molecules, model.graph_builder())
    torch.manual_seed(3)  # the same edge-frame roll as the finite differences use
    ad = autodiff_hessian(model, batch)
    fd = finite_difference_hessian(model, batch, delta=1e-6, seed=3, fixed_frames=True)
    assert ad.abs().max() > 0.01
    torch.testing.assert_close(ad, fd, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_batched_rows_loop_and_single_molecules_agree(horm_molecules):
    torch.manual_seed(0)
    model = HIPEquiformerV2(**TINY_MODEL).eval()
    batch = collate_molecules(horm_molecules, model.graph_builder())
    torch.manual_seed(5)
    vectorized = autodiff_hessian(model, batch, chunk_size=7, vectorized=True)
    torch.manual_seed(5)
    looped = autodiff_hessian(model, batch, vectorized=False)
    torch.testing.assert_close(vectorized, looped, rtol=1e-5, atol=1e-6)
    rows = {}
    for method in (None, False):  # the CPU default is the loop, bit for bit
        torch.manual_seed(5)
        rows[method] = autodiff_hessian(model, batch, vectorized=method, max_rows=2)
    assert torch.equal(rows[None], rows[False])
    for h, (z, pos) in zip(split_hessian(vectorized, batch.natoms), horm_molecules, strict=True):
        single = autodiff_hessian(model, collate_molecules([(z, pos)], model.graph_builder()))
        torch.testing.assert_close(h.reshape(-1), single, rtol=1e-3, atol=1e-4)


def test_default_method_per_device():
    """The row loop on CPUs (measured faster there), batched gradients on accelerators."""
    assert not prefers_vectorized(torch.device("cpu"))
    assert prefers_vectorized(torch.device("cuda"))
