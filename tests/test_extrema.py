"""One definition of an imaginary mode: eval.py's metrics, predict.py's table, the benchmarks' counts and the
TS success rule classify the same Hessian the same way at their thresholds (hip/extrema.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from hip.constants import EV_PER_A2_AMU_TO_CM1
from hip.extrema import (
    PREDICT_THRESHOLD_CM1,
    TABLE3_EIGENVALUE_THRESHOLD,
    TABLE3_THRESHOLD_CM1,
    TS_THRESHOLD_CM1,
    count_imaginary,
    extremum_type,
    frequency_threshold,
    is_first_order_saddle,
)
from hip.metrics import molecule_metrics
from hip.optimize import count_negative_modes
from hip.prediction import AnalysisSettings, analyse_frame
from hip.vibrations import atomic_masses, eckart_vectors, vibrational_analysis

#: wavenumbers (cm⁻¹) of the built Hessian's 12 modes: one real imaginary mode, a noise mode between the
#: TS/predict tolerance (10) and Table 3's (0.52), two on either side of Table 3's, and real modes.
TARGET = np.array([-300.0, -5.0, -0.53, -0.51, 120.0, 400.0, 800.0, 1000.0, 1200.0, 1500.0, 2900.0, 3600.0])


def built_hessian(atoms, frequencies_cm1: np.ndarray, seed: int = 0) -> np.ndarray:
    """A Cartesian Hessian (eV/Å²) whose projected mass-weighted spectrum is ``frequencies_cm1``, with random
    modes in the vibrational subspace and exact rigid-body null vectors, built without hip's analysis."""
    masses = atomic_masses(atoms.numbers).numpy()
    u = eckart_vectors(atoms.positions, masses).numpy()
    q, _ = np.linalg.qr(u.T, mode="complete")
    basis = q[:, u.shape[0]:]
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(frequencies_cm1),) * 2))
    eigenvalues = np.sign(frequencies_cm1) * (frequencies_cm1 / EV_PER_A2_AMU_TO_CM1) ** 2
    weighted = basis @ rotation @ np.diag(eigenvalues) @ rotation.T @ basis.T
    sqrt_m = np.sqrt(np.repeat(masses, 3))
    return sqrt_m[:, None] * weighted * sqrt_m[None, :]


def test_thresholds_name_each_protocol():
    assert TABLE3_THRESHOLD_CM1 == pytest.approx(0.5214, abs=1e-4)  # −1e-6 eV/(Å²·amu) as a wavenumber
    assert frequency_threshold(TABLE3_EIGENVALUE_THRESHOLD) == TABLE3_THRESHOLD_CM1
    assert TS_THRESHOLD_CM1 == PREDICT_THRESHOLD_CM1 == 10.0
    with pytest.raises(ValueError, match="must be ≤ 0"):
        frequency_threshold(1e-6)
    with pytest.raises(ValueError, match="threshold_cm1 must be ≥ 0"):
        count_imaginary([-1.0], -1.0)


def test_the_same_hessian_is_classified_alike_by_every_command():
    atoms = molecule("CH3OH")
    hessian = built_hessian(atoms, TARGET)
    frequencies = vibrational_analysis(hessian, atoms.positions, atoms.numbers).frequencies.numpy()
    np.testing.assert_allclose(frequencies, TARGET, atol=1e-6)

    # eval.py (Tables 3, 9): eigenvalues below −1e-6 eV/(Å²·amu): −300, −5, −0.53 cm⁻¹
    h = torch.as_tensor(hessian)
    metrics = molecule_metrics(h, h, torch.as_tensor(atoms.positions), torch.as_tensor(atoms.numbers))
    eigenvalues = vibrational_analysis(hessian, atoms.positions, atoms.numbers).eigenvalues.numpy()
    assert metrics["n_neg_true"] == int((eigenvalues < TABLE3_EIGENVALUE_THRESHOLD).sum()) == 3
    # the downstream benchmarks count at eval.py's threshold
    assert count_negative_modes(hessian, atoms) == 3
    # predict.py at its default (10 cm⁻¹) and at eval.py's threshold
    result = {"energy": 0.0, "forces": np.zeros((len(atoms), 3)), "hessian": hessian}
    default = analyse_frame(0, atoms, result, AnalysisSettings())
    table3 = analyse_frame(0, atoms, result, AnalysisSettings(imaginary_threshold_cm1=TABLE3_THRESHOLD_CM1))
    assert (default.n_imaginary, default.extremum) == (1, "transition state")
    assert (table3.n_imaginary, table3.extremum) == (3, extremum_type(3)) == (3, "saddle point of order 3")
    # TS success (reactions, TS search): exactly one mode below −10 cm⁻¹
    assert is_first_order_saddle(frequencies)
    assert not is_first_order_saddle(frequencies, TABLE3_THRESHOLD_CM1)
    for threshold in (0.0, TABLE3_THRESHOLD_CM1, PREDICT_THRESHOLD_CM1, 100.0):
        assert count_imaginary(frequencies, threshold) == int((TARGET < -threshold).sum())
