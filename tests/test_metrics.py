"""Tests of hip.metrics against scipy references (paper Table 1, 3, 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from hip.metrics import (
    METRIC_COLUMNS,
    TABLE1_COLUMNS,
    TABLE6_COLUMNS,
    TIME_COLUMN,
    abs_cosine,
    aggregate_metrics,
    batch_metrics,
    format_table,
    molecule_metrics,
)

POS = np.array([[0.0, 0.0, 0.0], [1.43, 0.0, 0.0], [-0.36, 1.03, 0.0],
                [-0.36, -0.51, 0.89], [1.75, 0.9, -0.2]])
Z = np.array([6, 8, 1, 1, 1])
MASS = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}


def vib_basis(pos, z):
    """Reference vibrational basis: null space of lab-frame translations + infinitesimal rotations."""
    m = np.array([MASS[int(a)] for a in z])
    r = pos - (m[:, None] * pos).sum(0) / m.sum()
    sm = np.sqrt(m)
    vecs = [np.kron(sm, np.eye(3)[a]) for a in range(3)]
    vecs += [(sm[:, None] * np.cross(np.eye(3)[a], r)).ravel() for a in range(3)]
    u, s, _ = np.linalg.svd(np.array(vecs).T)
    return u[:, int((s > 1e-6 * s[0]).sum()):], np.repeat(m, 3)


def hessian_from_modes(lam, seed=0):
    """Cartesian Hessian (eV/Å²) whose projected mass-weighted spectrum is exactly ``lam`` (ascending)."""
    basis, m3 = vib_basis(POS, Z)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(lam), len(lam))))
    modes = basis @ q
    hmw = modes @ np.diag(lam) @ modes.T
    return hmw * np.sqrt(m3)[:, None] * np.sqrt(m3)[None, :], modes


def random_true_pred(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(15, 15))
    true = 5 * (a + a.T)
    noise = rng.normal(size=(15, 15))
    return true, true + 0.3 * (noise + noise.T)


def reference_metrics(hp, ht, pos, z):
    """Independent implementation with scipy.linalg.eigh and an SVD null-space basis."""
    out = {"hessian_mae": np.abs(hp - ht).mean()}
    lp, vp = scipy.linalg.eigh(0.5 * (hp + hp.T))
    lt, vt = scipy.linalg.eigh(0.5 * (ht + ht.T))
    out |= {"lambda1_mae_raw": abs(lp[0] - lt[0]), "lambda2_mae_raw": abs(lp[1] - lt[1]),
            "v1_cos_raw": abs(vp[:, 0] @ vt[:, 0]), "v2_cos_raw": abs(vp[:, 1] @ vt[:, 1])}
    basis, m3 = vib_basis(pos, z)
    w = 1 / np.sqrt(m3)
    ep, wp = scipy.linalg.eigh(basis.T @ (0.5 * (hp + hp.T) * w[:, None] * w[None, :]) @ basis)
    et, wt = scipy.linalg.eigh(basis.T @ (0.5 * (ht + ht.T) * w[:, None] * w[None, :]) @ basis)
    vp, vt = basis @ wp, basis @ wt
    out |= {"eigenvalue_mae": np.abs(ep - et).mean(), "lambda1_mae": abs(ep[0] - et[0]),
            "lambda2_mae": abs(ep[1] - et[1]), "v1_cos": abs(vp[:, 0] @ vt[:, 0]),
            "v2_cos": abs(vp[:, 1] @ vt[:, 1]), "n_neg_pred": (ep < 0).sum(), "n_neg_true": (et < 0).sum()}
    out["same_extremum_type"] = float(out["n_neg_pred"] == out["n_neg_true"])
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_scipy_reference(seed):
    ht, hp = random_true_pred(seed)
    got = molecule_metrics(torch.tensor(hp), torch.tensor(ht), torch.tensor(POS), torch.tensor(Z))
    ref = reference_metrics(hp, ht, POS, Z)
    for key, value in ref.items():
        assert got[key] == pytest.approx(float(value), rel=1e-8, abs=1e-10), key
    assert 0.0 <= got["v1_cos"] <= 1.0 and 0.0 <= got["v1_cos_raw"] <= 1.0


def test_perfect_prediction():
    ht, _ = random_true_pred(2)
    forces = torch.randn(5, 3, dtype=torch.float64)
    got = molecule_metrics(torch.tensor(ht).reshape(-1), torch.tensor(ht), POS, Z, pred_energy=-1.5,
                           true_energy=torch.tensor(-1.5), pred_forces=forces, true_forces=forces.clone())
    for key in ("hessian_mae", "eigenvalue_mae", "lambda1_mae", "lambda2_mae", "lambda1_mae_raw",
                "lambda2_mae_raw", "energy_ae", "forces_mae"):
        assert got[key] == pytest.approx(0.0, abs=1e-12), key
    for key in ("v1_cos", "v2_cos", "v1_cos_raw", "v2_cos_raw", "same_extremum_type"):
        assert got[key] == pytest.approx(1.0, abs=1e-12), key


def test_abs_cosine_is_sign_invariant():
    v = torch.randn(12, dtype=torch.float64)
    w = torch.randn(12, dtype=torch.float64)
    assert abs_cosine(v, -v) == pytest.approx(1.0)
    assert abs_cosine(v, -w) == abs_cosine(v, w) == abs_cosine(-v, w)
    assert abs_cosine(3 * v, w) == pytest.approx(abs_cosine(v, w))


def test_extremum_classification_and_exact_errors():
    """A TS labelled Hessian (one negative mode) against a prediction that turned it positive."""
    lam_true = np.array([-0.5, 0.1, 0.4, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    lam_pred = lam_true.copy()
    lam_pred[0] = 0.05  # still the lowest, but positive
    ht, _ = hessian_from_modes(lam_true)
    hp, _ = hessian_from_modes(lam_pred)
    got = molecule_metrics(hp, ht, POS, Z)
    assert (got["n_neg_true"], got["n_neg_pred"], got["same_extremum_type"]) == (1.0, 0.0, 0.0)
    # ascending pairing: pred (0.05, 0.1, …) vs true (−0.5, 0.1, …)
    assert got["lambda1_mae"] == pytest.approx(0.55)
    assert got["lambda2_mae"] == pytest.approx(0.0, abs=1e-12)
    assert got["eigenvalue_mae"] == pytest.approx(0.55 / 9)
    assert got["v1_cos"] == pytest.approx(1.0)  # the lowest pred mode is still the true mode 0
    # a negative threshold above 0.5 counts no negative mode in either
    assert molecule_metrics(hp, ht, POS, Z, neg_threshold=0.6)["same_extremum_type"] == 1.0


def test_rejects_wrong_size():
    with pytest.raises(ValueError, match="atoms need"):
        molecule_metrics(torch.zeros(12, 12), torch.zeros(15, 15), POS, Z)


def test_batch_metrics_equal_per_molecule():
    rng = np.random.default_rng(3)
    sizes = [5, 3]
    pos = [POS, POS[:3]]
    z = [Z, Z[:3]]
    pairs = [random_true_pred(4), tuple(0.5 * (m + m.T) for m in rng.normal(size=(2, 9, 9)))]
    batch = {
        "natoms": torch.tensor(sizes),
        "pos": torch.tensor(np.concatenate(pos)),
        "z": torch.tensor(np.concatenate(z)),
        "hessian": torch.tensor(np.concatenate([t.ravel() for t, _ in pairs])),
        "ae": torch.tensor([0.1, -0.2]),
        "forces": torch.tensor(rng.normal(size=(8, 3))),
    }
    pred = {"hessian": torch.tensor(np.concatenate([p.ravel() for _, p in pairs])),
            "energy": torch.tensor([0.3, -0.1]), "forces": batch["forces"] + 0.5}
    rows = batch_metrics(pred, batch)
    assert len(rows) == 2
    for b in range(2):
        ref = molecule_metrics(pairs[b][1], pairs[b][0], pos[b], z[b])
        for key, value in ref.items():
            assert rows[b][key] == pytest.approx(value, nan_ok=True), key
        assert rows[b]["forces_mae"] == pytest.approx(0.5)
    assert rows[0]["energy_ae"] == pytest.approx(0.2) and rows[1]["energy_ae"] == pytest.approx(0.1)


def test_aggregate_and_table():
    rows = [{"hessian_mae": 0.1, "v1_cos": 0.9, "lambda2_mae": math.nan, "same_extremum_type": 1.0},
            {"hessian_mae": 0.3, "v1_cos": 0.7, "lambda2_mae": 0.2, "same_extremum_type": 0.0},
            {"hessian_mae": 0.2, "v1_cos": 0.8, "lambda2_mae": 0.4, "same_extremum_type": 1.0}]
    agg = aggregate_metrics(rows)
    assert agg[METRIC_COLUMNS["hessian_mae"]] == pytest.approx(0.2)
    assert agg[METRIC_COLUMNS["v1_cos"]] == pytest.approx(0.8)
    assert agg[METRIC_COLUMNS["lambda2_mae"]] == pytest.approx(0.3)  # NaN (diatomic) skipped
    assert agg[METRIC_COLUMNS["same_extremum_type"]] == pytest.approx(2 / 3)
    assert agg["Molecules [count]"] == 3
    assert all("[" in name and name.endswith("]") for name in agg)
    with pytest.raises(ValueError):
        aggregate_metrics([])

    text = format_table({"HIP": agg | {TIME_COLUMN: 38.5}, "AD": agg})
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].split()[0] == "Method" and TIME_COLUMN in lines[0]
    assert lines[2].startswith("HIP") and "38.500" in lines[2]
    assert lines[3].startswith("AD") and lines[3].endswith("–")
    assert "0.200" in lines[3] and "0.800" in lines[3]
    # columns present in no result are dropped; Table 6 columns all carry units
    assert TIME_COLUMN not in format_table({"AD": agg})
    assert all("[" in c for c in (*TABLE1_COLUMNS, *TABLE6_COLUMNS))
