"""Tests of hip/dft.py: PySCF labels at HORM's level, their units and layout, and the DFT check of a TS.

DFT tests use a cheap level (LDA/STO-3G, or HORM's level on H2 and sto-3g waters) to stay fast; unit
conversions are checked against finite differences computed in Å and eV, a route independent of the
Hartree/Bohr conversion factors.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from ase import Atoms

from hip import dft
from hip.constants import ATOM_REFERENCE_ENERGY_EV
from hip.dft import dft_verify

CHEAP = {"xc": "lda,vwn", "basis": "sto-3g", "conv_tol": 1e-12}

# A slightly distorted water molecule (Å): non-zero forces, no symmetry.
WATER_Z = np.array([8, 1, 1])
WATER_POS = np.array([[0.0, 0.0, 0.12], [0.0, 0.78, -0.46], [0.05, -0.74, -0.50]])


def _labels(numbers, positions, hessian=True) -> dft.Labels:
    pytest.importorskip("pyscf")
    return dft.label_molecule(numbers, positions, hessian=hessian, **CHEAP)


# ------------------------------------------------------------------------------- defaults and errors


def test_defaults_are_horm_level_of_theory():
    params = inspect.signature(dft.label_molecule).parameters
    assert params["xc"].default == "wb97x"
    assert params["basis"].default == "6-31g*"
    assert params["cart"].default is False
    assert params["grid_level"].default is None  # PySCF's default grid, as HORM


def test_element_without_reference_energy_is_named():
    # F has no reference energy; the error comes before any DFT work (no PySCF needed).
    with pytest.raises(ValueError, match=r"F \(Z=9\)"):
        dft.label_molecule([9, 1], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.92]])


def test_reference_energy_sums_per_element():
    assert dft.reference_energy([8, 1, 1]) == pytest.approx(
        ATOM_REFERENCE_ENERGY_EV[8] + 2 * ATOM_REFERENCE_ENERGY_EV[1])


def test_hessian_flat_layout_is_atom_major():
    rng = np.random.default_rng(1)
    n = 3
    h4 = rng.normal(size=(n, n, 3, 3))
    flat = dft.hessian_to_flat_layout(h4)
    for i in range(n):
        for j in range(n):
            for a in range(3):
                for b in range(3):
                    assert flat[3 * i + a, 3 * j + b] == h4[i, j, a, b]


def test_odd_electron_count_is_rejected():
    pytest.importorskip("pyscf")
    with pytest.raises(ValueError, match="odd number of electrons"):
        dft.label_molecule([7, 8], [[0.0, 0.0, 0.0], [0.0, 0.0, 1.15]], **CHEAP)


# ------------------------------------------------------------------------------- DFT labels


@pytest.mark.slow
def test_forces_are_minus_finite_difference_of_energy():
    base = _labels(WATER_Z, WATER_POS, hessian=False)
    step = 1e-3  # Å
    fd = np.zeros_like(WATER_POS)
    for i in range(len(WATER_Z)):
        for a in range(3):
            plus, minus = WATER_POS.copy(), WATER_POS.copy()
            plus[i, a] += step
            minus[i, a] -= step
            e_plus = _labels(WATER_Z, plus, hessian=False).energy
            e_minus = _labels(WATER_Z, minus, hessian=False).energy
            fd[i, a] = -(e_plus - e_minus) / (2 * step)  # eV/Å, no unit factors involved
    assert np.abs(base.forces).max() > 0.5  # a real test: the geometry is off equilibrium
    np.testing.assert_allclose(base.forces, fd, atol=5e-3)


@pytest.mark.slow
def test_hessian_matches_finite_difference_of_forces():
    base = _labels(WATER_Z, WATER_POS)
    step = 1e-3  # Å
    fd = np.zeros_like(base.hessian)
    for c in range(3 * len(WATER_Z)):
        plus, minus = WATER_POS.copy(), WATER_POS.copy()
        plus.reshape(-1)[c] += step
        minus.reshape(-1)[c] -= step
        f_plus = _labels(WATER_Z, plus, hessian=False).forces.reshape(-1)
        f_minus = _labels(WATER_Z, minus, hessian=False).forces.reshape(-1)
        fd[:, c] = -(f_plus - f_minus) / (2 * step)  # dF/dx = −d²E/dx², in eV/Å²
    assert base.hessian.shape == (9, 9)
    np.testing.assert_allclose(base.hessian, fd, atol=0.05 + 0.01 * np.abs(fd).max())


def test_horm_level_h2_is_symmetric_and_translation_invariant():
    pytest.importorskip("pyscf")
    labels = dft.label_molecule([1, 1], [[0.0, 0.0, 0.0], [0.1, 0.2, 0.80]])  # HORM's level, stretched H2
    h = labels.hessian
    assert h.shape == (6, 6)
    assert labels.converged
    assert set(labels.timings) == {"scf", "gradient", "hessian", "total"}
    # Both hold up to the DFT grid (PySCF's Hessian has no grid response): 0.2 % of the largest entry.
    tol = 2e-3 * np.abs(h).max()
    np.testing.assert_allclose(h, h.T, atol=tol)
    # Translating the molecule changes nothing: forces sum to zero, Hessian rows sum to zero per xyz.
    np.testing.assert_allclose(labels.forces.sum(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(h.reshape(6, 2, 3).sum(axis=1), 0.0, atol=tol)
    # Stretched bond (|r| ≈ 0.83 Å > 0.74 Å): the forces pull the atoms together.
    bond = labels.positions[1] - labels.positions[0]
    assert np.dot(labels.forces[1], bond) < 0
    assert labels.ae == pytest.approx(labels.energy - 2 * ATOM_REFERENCE_ENERGY_EV[1])


# ---- DFT verification (cheap basis) ---------------------------------------------------------------
@pytest.mark.slow
def test_dft_verify_matches_pyscf_on_water():
    """Water near its minimum: no negative DFT mode, not a TS; the force RMS equals PySCF's gradient RMS."""
    pytest.importorskip("pyscf")
    from ase.build import molecule
    from pyscf import dft as pyscf_dft
    from pyscf import gto

    water = molecule("H2O")
    check = dft_verify(water, basis="sto-3g")
    assert check.negative_modes == 0 and not check.ts and not check.converged_ts
    mol = gto.M(atom=[(s, p) for s, p in zip(water.get_chemical_symbols(), water.positions.tolist(), strict=True)],
                basis="sto-3g", unit="Angstrom", verbose=0)
    mf = pyscf_dft.RKS(mol)
    mf.xc = "wb97x"
    mf.kernel()
    gradient = mf.nuc_grad_method().kernel()  # Hartree/Bohr
    assert check.force_rms == pytest.approx(float(np.sqrt((gradient**2).mean())), rel=1e-4)


@pytest.mark.slow
def test_dft_verify_finds_the_one_imaginary_mode_of_planar_ammonia():
    """Planar (D3h) NH3 is the first-order saddle of the umbrella inversion: one negative DFT mode, a TS."""
    pytest.importorskip("pyscf")
    angles = np.deg2rad([0.0, 120.0, 240.0])
    ammonia = Atoms("NH3", positions=[[0, 0, 0], *(1.02 * np.stack([np.cos(angles), np.sin(angles), 0 * angles], 1))])
    check = dft_verify(ammonia, basis="sto-3g")
    assert check.negative_modes == 1 and check.ts and not check.error
    assert check.lowest_frequencies[0] < -100 < 0 < check.lowest_frequencies[1]  # the umbrella, cm⁻¹
    assert check.converged_ts == (check.force_rms < check.FORCE_RMS_THRESHOLD)


def test_dft_verify_records_a_failed_calculation_instead_of_raising():
    check = dft_verify(Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]]), basis="sto-3g")  # 9 electrons: no RKS
    assert check.error.startswith("ValueError") and "odd number of electrons" in check.error
    assert check.negative_modes is None and not check.ts and not check.converged_ts


def test_grid_response_makes_forces_the_exact_derivative_of_the_energy():
    """On a coarse grid the forces without grid response miss the energy's slope; with it they match."""
    pytest.importorskip("pyscf")
    coarse = {**CHEAP, "grid_level": 0}
    step, (i, a) = 1e-4, (1, 1)
    plus, minus = WATER_POS.copy(), WATER_POS.copy()
    plus[i, a] += step
    minus[i, a] -= step
    fd = -(dft.label_molecule(WATER_Z, plus, hessian=False, **coarse).energy
           - dft.label_molecule(WATER_Z, minus, hessian=False, **coarse).energy) / (2 * step)
    errors = {response: abs(dft.label_molecule(WATER_Z, WATER_POS, hessian=False, grid_response=response,
                                               **coarse).forces[i, a] - fd) for response in (False, True)}
    assert errors[True] < 1e-4 < errors[False], errors


def test_the_calculator_starts_from_the_last_density_and_computes_each_hessian_once(monkeypatch):
    pytest.importorskip("pyscf")
    calc = dft.DFTCalculator(**CHEAP)
    atoms = Atoms(numbers=WATER_Z, positions=WATER_POS)
    atoms.calc = calc
    atoms.get_potential_energy()
    atoms.positions[0, 2] += 0.02
    calls = []
    original = dft.label_molecule

    def spy(*args, **kwargs):
        calls.append(kwargs.get("initial_density") is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(dft, "label_molecule", spy)
    forces, hessian = atoms.get_forces(), calc.get_hessian(atoms)
    fresh = original(WATER_Z, atoms.positions, **CHEAP)
    np.testing.assert_allclose(forces, fresh.forces, atol=1e-6)  # the same SCF solution from another start
    np.testing.assert_allclose(hessian, fresh.hessian, atol=1e-5)
    atoms.positions[0, 2] -= 0.02
    atoms.get_potential_energy()
    atoms.positions[0, 2] += 0.02
    np.testing.assert_array_equal(calc.get_hessian(atoms), hessian)  # from the cache
    assert calls == [True, True, True]  # forces, Hessian, the energy in between; the cached Hessian: none
