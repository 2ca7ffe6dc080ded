"""Tests of hip.losses against numpy references (paper eq. 8–9, reference README §6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hip.losses import LOSS_TERMS, eigen_subspace_loss, hessian_mae, hessian_mse, hip_loss, pad_hessians

NATOMS = [1, 2, 4, 5]  # 3N = 3 and 6 are below k = 8


def _random_hessians(natoms, seed=0, dtype=torch.float64):
    """Flat batch of random symmetric matrices with well-separated eigenvalues."""
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for n in natoms:
        a = torch.randn(3 * n, 3 * n, generator=gen, dtype=dtype)
        blocks.append((a + a.T).reshape(-1))
    return torch.cat(blocks)


def _numpy_subspace_loss(pred, target, natoms, k):
    """Per-molecule loop in numpy: mean over molecules of mean|V_kᵀ P V_k − diag(λ_k)|."""
    pred, target = pred.detach().numpy(), target.detach().numpy()
    losses, start = [], 0
    for n in natoms:
        d = 3 * n
        p = pred[start:start + d * d].reshape(d, d)
        t = target[start:start + d * d].reshape(d, d)
        start += d * d
        lam, vec = np.linalg.eigh(0.5 * (t + t.T))
        kb = d if k is None else min(k, d)
        vk = vec[:, :kb]
        losses.append(np.abs(vk.T @ p @ vk - np.diag(lam[:kb])).mean())
    return float(np.mean(losses))


def test_mae_mse_match_numpy():
    pred, target = _random_hessians(NATOMS, 1), _random_hessians(NATOMS, 2)
    p, t = pred.numpy(), target.numpy()
    assert hessian_mae(pred, target).item() == pytest.approx(np.abs(p - t).mean(), rel=1e-12)
    assert hessian_mse(pred, target).item() == pytest.approx(((p - t) ** 2).mean(), rel=1e-12)


@pytest.mark.parametrize("loss", [hessian_mae, hessian_mse])
def test_elementwise_zero_at_minimum_and_shape_check(loss):
    target = _random_hessians(NATOMS)
    assert loss(target.clone(), target).item() == 0.0
    assert loss(target + 0.01, target).item() > 0.0
    with pytest.raises(ValueError, match="shape"):
        loss(target[:-1], target)


def test_pad_hessians_places_blocks():
    flat = _random_hessians([1, 3])
    padded, valid = pad_hessians(flat, torch.tensor([1, 3]))
    assert padded.shape == (2, 9, 9)
    assert torch.equal(padded[0, :3, :3], flat[:9].view(3, 3))
    assert torch.equal(padded[1], flat[9:].view(9, 9))
    assert padded[0, 3:].abs().sum() == 0 and padded[0, :, 3:].abs().sum() == 0
    assert valid.sum(1).tolist() == [3, 9]
    with pytest.raises(ValueError, match="natoms"):
        pad_hessians(flat[:-1], [1, 3])


@pytest.mark.parametrize("k", [8, 2, None])
def test_eigen_subspace_batched_equals_loop(k):
    natoms = [4, 1, 5, 2]  # mixed sizes, unsorted; two molecules with 3N < 8
    pred, target = _random_hessians(natoms, 3), _random_hessians(natoms, 4)
    got = eigen_subspace_loss(pred, target, torch.tensor(natoms), k=k)
    assert got.item() == pytest.approx(_numpy_subspace_loss(pred, target, natoms, k), rel=1e-10)


def test_eigen_subspace_zero_at_minimum_and_positive_otherwise():
    target = _random_hessians(NATOMS, 5)
    assert eigen_subspace_loss(target.clone(), target, NATOMS).item() == pytest.approx(0.0, abs=1e-12)
    assert eigen_subspace_loss(target + 0.05 * _random_hessians(NATOMS, 6), target, NATOMS).item() > 1e-3


def test_eigen_subspace_ignores_the_complement():
    """Errors confined to eigenvectors beyond the k lowest cost nothing; inside the subspace they do."""
    target = _random_hessians([4], 15)
    _, vec = torch.linalg.eigh(target.view(12, 12))
    outside = target + 3.0 * torch.outer(vec[:, 9], vec[:, 9]).reshape(-1)
    inside = target + 3.0 * torch.outer(vec[:, 1], vec[:, 1]).reshape(-1)
    assert eigen_subspace_loss(outside, target, [4], k=8).item() == pytest.approx(0.0, abs=1e-12)
    assert eigen_subspace_loss(inside, target, [4], k=8).item() == pytest.approx(3.0 / 64, rel=1e-9)


def test_eigen_subspace_float32_label_with_asymmetry():
    """Float32 labels that are slightly asymmetric, like DFT Hessians, give a loss near 0 at pred = label."""
    target = _random_hessians([3, 4], 7, dtype=torch.float32)
    noisy = target + 1e-3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(8))
    sym = torch.cat([b.add(b.T).mul(0.5).reshape(-1) for b in
                     (noisy[:81].view(9, 9), noisy[81:].view(12, 12))])
    assert eigen_subspace_loss(sym, noisy, [3, 4]).item() < 1e-5


def test_gradient_flows_to_pred_only():
    natoms = [1, 3]
    pred = _random_hessians(natoms, 9).requires_grad_()
    target = _random_hessians(natoms, 10).requires_grad_()
    eigen_subspace_loss(pred, target, natoms).backward()
    assert target.grad is None
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # analytic gradient of mean_b mean|V_kᵀ P V_k − Λ_k|: V_k sign(R) V_kᵀ / (k_b² B) per molecule
    expected, start = [], 0
    for n in natoms:
        d = 3 * n
        p = pred.detach()[start:start + d * d].view(d, d).numpy()
        t = target.detach()[start:start + d * d].view(d, d).numpy()
        start += d * d
        lam, vec = np.linalg.eigh(0.5 * (t + t.T))
        kb = min(8, d)
        vk = vec[:, :kb]
        sign = np.sign(vk.T @ p @ vk - np.diag(lam[:kb]))
        expected.append((vk @ sign @ vk.T / (kb * kb * len(natoms))).ravel())
    np.testing.assert_allclose(pred.grad.numpy(), np.concatenate(expected), atol=1e-12)


def _batch(natoms, seed):
    gen = torch.Generator().manual_seed(seed)
    n = sum(natoms)
    return {
        "ae": torch.randn(len(natoms), generator=gen, dtype=torch.float64),
        "forces": torch.randn(n, 3, generator=gen, dtype=torch.float64),
        "hessian": _random_hessians(natoms, seed),
        "natoms": torch.tensor(natoms),
    }


def test_hip_loss_weighted_sum_and_skipped_terms():
    natoms = [2, 3]
    batch = _batch(natoms, 11)
    other = _batch(natoms, 12)
    pred = {"energy": other["ae"], "forces": other["forces"], "hessian": other["hessian"]}
    weights = {"energy": 1.0, "forces": 25.0, "hessian_mae": 10.0, "hessian_mse": 0.0, "eigen_subspace": 1.0}
    out = hip_loss(pred, batch, weights)
    assert set(out) == {"energy", "forces", "hessian_mae", "eigen_subspace", "loss"}
    assert out["energy"].item() == pytest.approx((pred["energy"] - batch["ae"]).abs().mean().item())
    assert out["forces"].item() == pytest.approx((pred["forces"] - batch["forces"]).abs().mean().item())
    assert out["hessian_mae"].item() == pytest.approx(hessian_mae(pred["hessian"], batch["hessian"]).item())
    expected = sum(weights[t] * out[t] for t in ("energy", "forces", "hessian_mae", "eigen_subspace"))
    assert out["loss"].item() == pytest.approx(expected.item())
    # Hessian-only objective needs no energy or forces
    only = hip_loss({"hessian": pred["hessian"]}, batch, {"hessian_mse": 2.0})
    assert set(only) == {"hessian_mse", "loss"}
    assert only["loss"].item() == pytest.approx(2 * hessian_mse(pred["hessian"], batch["hessian"]).item())


def test_hip_loss_zero_at_minimum():
    batch = _batch([2, 3], 13)
    pred = {"energy": batch["ae"], "forces": batch["forces"], "hessian": batch["hessian"]}
    out = hip_loss(pred, batch, dict.fromkeys(LOSS_TERMS, 1.0))
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-12)


def test_hip_loss_rejects_bad_weights():
    batch = _batch([2], 14)
    pred = {"hessian": batch["hessian"]}
    with pytest.raises(ValueError, match="valid keys"):
        hip_loss(pred, batch, {"hessian": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        hip_loss(pred, batch, {"hessian_mae": -1.0})
    with pytest.raises(ValueError, match="zero"):
        hip_loss(pred, batch, {"hessian_mae": 0.0})
