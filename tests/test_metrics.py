"""Tests of hip.metrics against numpy/scipy references and hand-counted cases (paper Tables 1, 3, 6, 9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from hip.metrics import (
    EXTREMUM_ACCURACY,
    METRIC_COLUMNS,
    TABLE1_COLUMNS,
    TABLE3_COLUMNS,
    TABLE6_COLUMNS,
    TABLE9_COLUMNS,
    TIME_COLUMN,
    abs_cosine,
    aggregate_metrics,
    batch_metrics,
    extremum_classification,
    format_table,
    molecule_metrics,
    ts_classification,
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
    out |= {"eigenvalue_mae_raw": np.abs(lp - lt).mean(),
            "lambda1_mae_raw": abs(lp[0] - lt[0]), "lambda2_mae_raw": abs(lp[1] - lt[1]),
            "v1_cos_raw": abs(vp[:, 0] @ vt[:, 0]), "v2_cos_raw": abs(vp[:, 1] @ vt[:, 1])}
    basis, m3 = vib_basis(pos, z)
    w = 1 / np.sqrt(m3)
    ep, wp = scipy.linalg.eigh(basis.T @ (0.5 * (hp + hp.T) * w[:, None] * w[None, :]) @ basis)
    et, wt = scipy.linalg.eigh(basis.T @ (0.5 * (ht + ht.T) * w[:, None] * w[None, :]) @ basis)
    vp, vt = basis @ wp, basis @ wt
    out |= {"eigenvalue_mae": np.abs(ep - et).mean(), "lambda1_mae": abs(ep[0] - et[0]),
            "lambda2_mae": abs(ep[1] - et[1]), "v1_cos": abs(vp[:, 0] @ vt[:, 0]),
            "v2_cos": abs(vp[:, 1] @ vt[:, 1]), "n_neg_pred": (ep < -1e-6).sum(), "n_neg_true": (et < -1e-6).sum()}
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
    for key in ("hessian_mae", "eigenvalue_mae", "eigenvalue_mae_raw", "lambda1_mae", "lambda2_mae",
                "lambda1_mae_raw", "lambda2_mae_raw", "energy_ae", "forces_mae"):
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
    # a threshold below −0.5 counts no negative mode in either
    assert molecule_metrics(hp, ht, POS, Z, negative_eigenvalue_threshold=-0.6)["same_extremum_type"] == 1.0


def test_negative_eigenvalue_threshold_default_is_minus_1e_minus_6():
    """The authors count eigenvalues below −1e-6 eV/(Å²·amu): −5e-7 is a minimum, −2e-6 a saddle."""
    lam = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    ht, _ = hessian_from_modes(np.r_[-5e-7, lam[1:]])
    hp, _ = hessian_from_modes(np.r_[-2e-6, lam[1:]])
    got = molecule_metrics(hp, ht, POS, Z)
    assert (got["n_neg_true"], got["n_neg_pred"]) == (0.0, 1.0)
    at_zero = molecule_metrics(hp, ht, POS, Z, negative_eigenvalue_threshold=0.0)
    assert (at_zero["n_neg_true"], at_zero["n_neg_pred"]) == (1.0, 1.0)


def test_raw_eigenvalue_mae_of_asymmetric_hessian_matches_numpy_eigh():
    """Table 1 "Eigenvalues": all 3N raw eigenvalues, decomposed as the authors' torch.linalg.eigh does,
    i.e. from the lower triangle, also for an asymmetric (autodiff) prediction."""
    rng = np.random.default_rng(7)
    ht, _ = random_true_pred(5)
    hp = ht + 0.4 * rng.normal(size=ht.shape)  # asymmetric
    lower = np.tril(hp) + np.tril(hp, -1).T  # the symmetric matrix whose lower triangle hp has
    expected = np.abs(np.linalg.eigvalsh(lower) - np.linalg.eigvalsh(ht)).mean()
    got = molecule_metrics(hp, ht, POS, Z)
    assert got["eigenvalue_mae_raw"] == pytest.approx(expected, rel=1e-10)
    assert len(np.linalg.eigvalsh(lower)) == 3 * len(POS)  # all 3N, no projection
    symmetrised = np.abs(np.linalg.eigvalsh(0.5 * (hp + hp.T)) - np.linalg.eigvalsh(ht)).mean()
    assert abs(got["eigenvalue_mae_raw"] - symmetrised) > 1e-3  # the test tells the two conventions apart


def confusion_rows(pairs_with_counts):
    """Per-molecule rows with (n_neg_true, n_neg_pred), each pair repeated count times."""
    return [{"n_neg_true": float(t), "n_neg_pred": float(p)}
            for (t, p), count in pairs_with_counts for _ in range(count)]


def test_table9_rates_on_a_hand_made_confusion():
    # TS = exactly one negative eigenvalue. TP 3, FN 2 (one predicted as minimum, one as order 2),
    # FP 1 (a DFT minimum predicted TS), TN 4 (2 minima right, 1 order-2 right, 1 order-3 called order 2)
    rows = confusion_rows([((1, 1), 3), ((1, 0), 1), ((1, 2), 1), ((0, 1), 1), ((0, 0), 2), ((2, 2), 1),
                           ((3, 2), 1)])
    got = ts_classification(rows)
    assert [got[c] for c in TABLE9_COLUMNS] == pytest.approx([60.0, 20.0, 40.0, 80.0, 75.0, 70.0, 60.0])
    assert (got["TS TP [count]"], got["TS FP [count]"], got["TS FN [count]"], got["TS TN [count]"]) == (3, 1, 2, 4)
    # no DFT transition state at all: TPR, FNR undefined (NaN), precision 0 of 1 predicted
    only_minima = ts_classification(confusion_rows([((0, 0), 3), ((0, 1), 1)]))
    assert math.isnan(only_minima["TS TPR [%]"]) and math.isnan(only_minima["TS FNR [%]"])
    assert only_minima["TS precision [%]"] == 0.0 and only_minima["TS FPR [%]"] == pytest.approx(25.0)


def test_table3_extremum_types_on_a_hand_made_case():
    rows = confusion_rows([((1, 1), 3), ((1, 0), 1), ((1, 2), 1), ((0, 1), 1), ((0, 0), 2), ((2, 2), 1),
                           ((3, 2), 1)])
    got = extremum_classification(rows)
    # DFT: 3 minima, 5 first-order, 2 higher-order of 10
    assert [got[f"DFT {k} [%]"] for k in ("minima", "first-order saddles", "higher-order saddles")] == \
        pytest.approx([30.0, 50.0, 20.0])
    # minima 2/3, first-order 3/5, higher-order 2/2 (order 3 predicted as order 2 is still "higher"),
    # exact count 6/10 (the order-3 one is not)
    assert [got[c] for c in TABLE3_COLUMNS] == pytest.approx([200 / 3, 60.0, 100.0, 60.0])
    assert ts_classification(rows)[EXTREMUM_ACCURACY] == got[EXTREMUM_ACCURACY]
    with pytest.raises(ValueError):
        extremum_classification([])


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
    rows = [{"hessian_mae": 0.1, "v1_cos": 0.9, "lambda2_mae": math.nan, "n_neg_true": 1.0, "n_neg_pred": 1.0},
            {"hessian_mae": 0.3, "v1_cos": 0.7, "lambda2_mae": 0.2, "n_neg_true": 1.0, "n_neg_pred": 0.0},
            {"hessian_mae": 0.2, "v1_cos": 0.8, "lambda2_mae": 0.4, "n_neg_true": 0.0, "n_neg_pred": 0.0}]
    agg = aggregate_metrics(rows)
    assert agg[METRIC_COLUMNS["hessian_mae"]] == pytest.approx(0.2)
    assert agg[METRIC_COLUMNS["v1_cos"]] == pytest.approx(0.8)
    assert agg[METRIC_COLUMNS["lambda2_mae"]] == pytest.approx(0.3)  # NaN (diatomic) skipped
    assert agg[EXTREMUM_ACCURACY] == pytest.approx(200 / 3)
    assert set(TABLE3_COLUMNS) | set(TABLE9_COLUMNS) <= set(agg)
    assert math.isnan(agg["Higher-order saddles correct [%]"])  # no DFT higher-order saddle
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
    assert format_table({"HIP": agg}, TABLE3_COLUMNS, digits=1).splitlines()[2].split()[-2:] == ["–", "66.7"]
    # columns present in no result are dropped; Table 6 columns all carry units
    assert TIME_COLUMN not in format_table({"AD": agg})
    assert all("[" in c for c in (*TABLE1_COLUMNS, *TABLE6_COLUMNS))
