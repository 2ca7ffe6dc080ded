"""Tests of hip.optimize, hip.convergence, hip.irc and the benchmark harness on an analytic surface
whose minima and saddle are known in closed form.

The surface: three H atoms, two harmonic bonds r12, r23 (k, r0) and a symmetric double well in the
1–3 distance, V(r13) = h((r13 − c)²/w² − 1)². Its minima have r12 = r23 = r0 and r13 = c ± w; its
first-order saddle has r13 = c (V'' = −4h/w² < 0 there). Energies, forces and the exact Hessian come
from torch autograd in float64.
"""

from __future__ import annotations

import json
import math
from functools import partial

import ase.units
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import all_changes
from helpers import DoubleWell

from hip.benchmarks import (
    RELAXATION_METHODS,
    TS_SEARCH_METHODS,
    ResultsLog,
    load_molecules,
    perturb,
    select_methods,
)
from hip.convergence import GAUSSIAN_CRITERIA, ConvergenceCriteria, remove_rigid_body
from hip.irc import aligned_rmsd, irc_verify
from hip.optimize import (
    WorkEnergy,
    calculator_hessian,
    count_negative_modes,
    optimize,
    tolerate_sella_round_off,
)

#: the start of the message of Sella's symmetric eigensolver on an asymmetric matrix
SELLA_ASYMMETRY = "Symmetric eigensolver received a non-symmetric matrix"

K, R0, H, C, W = 30.0, 1.0, 0.5, 1.5, 0.3  # eV/Å², Å, eV, Å, Å
METHODS = {spec.key: spec for spec in (*RELAXATION_METHODS, *TS_SEARCH_METHODS)}


#: the analytic surface (tests/helpers.py) with this file's constants; a factory, as irc_verify wants one
surface = partial(DoubleWell, K, R0, H, C, W)


def triatomic(r13: float, r12: float = R0, r23: float = R0) -> Atoms:
    """Three H atoms in the xy plane with the given distances (Å)."""
    angle = math.acos((r12**2 + r23**2 - r13**2) / (2 * r12 * r23))
    positions = [[r12, 0.0, 0.0], [0.0, 0.0, 0.0], [r23 * math.cos(angle), r23 * math.sin(angle), 0.0]]
    atoms = Atoms("H3", positions=positions)
    atoms.calc = surface()
    return atoms


def r13(atoms: Atoms) -> float:
    return float(atoms.get_distance(0, 2))


# ---- convergence criteria -------------------------------------------------------------------------
def test_gaussian_criteria_are_in_hartree_per_bohr_and_bohr():
    """A force of 0.9× / 1.1× the threshold (converted with ASE's units) passes / fails."""
    criteria = GAUSSIAN_CRITERIA["default"]
    atoms = triatomic(1.5)
    ev_per_a = ase.units.Hartree / ase.units.Bohr
    # a force stretching bond 1–2 only (internal: no rigid-body part), one component per atom pair
    stretch = np.zeros((3, 3))
    stretch[0, 0], stretch[1, 0] = 1.0, -1.0
    tiny_step = np.zeros((3, 3))
    for scale, expected in ((0.9, True), (1.1, False)):
        check = criteria.measure(scale * criteria.max_force * ev_per_a * stretch, tiny_step, atoms.positions)
        assert check.max_force == pytest.approx(scale * criteria.max_force)
        assert check.converged is expected
    step = 1.1 * criteria.max_step * ase.units.Bohr * stretch
    check = criteria.measure(np.zeros((3, 3)), step, atoms.positions)
    assert check.max_step == pytest.approx(1.1 * criteria.max_step) and not check.converged
    rms = float(np.sqrt((step**2).mean())) / ase.units.Bohr
    assert check.rms_step == pytest.approx(rms)


def test_rigid_translations_and_rotations_do_not_count():
    atoms = triatomic(1.4)
    translation = np.tile([0.3, -0.2, 0.1], (3, 1))
    rotation = np.cross([0.0, 0.0, 1.0], atoms.positions - atoms.positions.mean(0))  # about z
    assert np.abs(remove_rigid_body(translation + rotation, atoms.positions)).max() < 1e-12
    internal = np.zeros((3, 3))
    internal[0, 0], internal[1, 0] = 1.0, -1.0  # bond stretch: orthogonal to rigid motions of a collinear pair
    kept = remove_rigid_body(internal, atoms.positions)
    assert np.linalg.norm(kept) > 0.5


def test_tight_is_stricter_than_default():
    default, tight = GAUSSIAN_CRITERIA["default"], GAUSSIAN_CRITERIA["tight"]
    assert all(getattr(tight, f) < getattr(default, f) for f in ("max_force", "rms_force", "max_step", "rms_step"))


# ---- optimisers on the analytic surface ------------------------------------------------------------
@pytest.mark.parametrize("key", ["rfo_hip", "rfo_bfgs_hip", "rfo_bfgs_identity", "ase_bfgs", "ase_fire"])
def test_minimisers_find_the_known_minimum(key):
    atoms = triatomic(1.33, 1.1, 0.93)  # closer to the r13 = 1.2 well than to the saddle at 1.5
    result = optimize(atoms, METHODS[key], GAUSSIAN_CRITERIA["default"], 150, 0, calculator_hessian)
    assert result.converged, result
    assert r13(atoms) == pytest.approx(C - W, abs=2e-3)
    assert atoms.get_distance(0, 1) == pytest.approx(R0, abs=2e-3)
    assert count_negative_modes(atoms.calc.get_hessian(atoms), atoms) == 0


def test_rfo_with_exact_hessians_converges_in_few_steps_and_counts_them():
    every, initial = triatomic(1.33, 1.1, 0.93), triatomic(1.33, 1.1, 0.93)
    fresh = optimize(every, METHODS["rfo_hip"], hessian_function=calculator_hessian)
    updated = optimize(initial, METHODS["rfo_bfgs_hip"], hessian_function=calculator_hessian)
    assert fresh.converged and fresh.steps <= 12
    assert fresh.hessian_calls == fresh.steps + 1  # one before every step, and the start's
    assert updated.hessian_calls == 1


@pytest.mark.parametrize("key", ["prfo_hip", "prfo_bfgs_hip"])
def test_prfo_finds_the_known_saddle(key):
    atoms = triatomic(1.42, 1.05, 0.97)
    result = optimize(atoms, METHODS[key], GAUSSIAN_CRITERIA["default"], 50, 1, calculator_hessian)
    assert result.converged, result
    assert result.hessian_calls == (1 if key == "prfo_bfgs_hip" else result.steps + 1)
    assert r13(atoms) == pytest.approx(C, abs=2e-3)
    assert count_negative_modes(atoms.calc.get_hessian(atoms), atoms) == 1


@pytest.mark.slow
def test_irc_from_the_saddle_reaches_both_minima():
    ts = triatomic(C)
    result = irc_verify(ts, surface, calculator_hessian, irc_steps=40)
    assert result.verified, result
    ends = sorted(r13(a) for a in result.endpoints)
    assert ends == pytest.approx([C - W, C + W], abs=5e-3)
    assert result.rmsd == pytest.approx(aligned_rmsd(triatomic(C - W), triatomic(C + W)), abs=1e-2)


def test_irc_time_limit_fails_the_check_and_says_so():
    result = irc_verify(triatomic(C), surface, calculator_hessian, irc_steps=40, time_limit=0.0)
    assert result.timed_out and not result.verified and not result.error


def test_irc_from_a_minimum_is_not_verified():
    """Both directions from a minimum fall back into it: one minimum, not two."""
    result = irc_verify(triatomic(C - W), surface, calculator_hessian, irc_steps=10)
    assert not result.verified


def test_work_energy_equals_the_energy_of_a_conservative_surface():
    """Trapezoidal force work along a path of small steps reproduces E(x) − E(x0) to O(step²) per step."""
    atoms = triatomic(1.3, 1.05, 0.95)
    reference = surface()
    atoms.calc = WorkEnergy(reference)
    start = reference.get_potential_energy(atoms)
    assert atoms.get_potential_energy() == pytest.approx(start)
    rng = np.random.default_rng(0)
    for _ in range(20):
        atoms.positions = atoms.positions + 1e-3 * rng.normal(size=(3, 3))
        atoms.get_potential_energy()
    truth = reference.get_potential_energy(atoms)
    assert atoms.get_potential_energy() == pytest.approx(truth, abs=1e-6)
    assert abs(truth - start) > 1e-3  # the path really moved on the surface


def test_optimizer_errors_are_recorded_not_raised():
    class Broken(DoubleWell):
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            if self.atoms.positions[0, 0] != 1.0:  # any geometry after the start
                self.results["forces"] = np.full((3, 3), np.nan)

    atoms = triatomic(1.3, R0, R0)
    atoms.calc = Broken(K, R0, H, C, W)
    result = optimize(atoms, METHODS["ase_fire"])
    assert not result.converged and "non-finite forces" in result.error


def test_sellas_eigensolver_tolerates_round_off_but_not_an_asymmetric_matrix(monkeypatch):
    """Sella raises on a Hessian asymmetric by 3e-10 relative, which its own algebra produces: hip's wrapper
    symmetrises anything within SELLA_SYMMETRY_RTOL and leaves larger asymmetry to Sella's error."""
    import sella.optimize.stepper as stepper

    sellas_own = getattr(stepper._eigh_symmetric, "__wrapped__", stepper._eigh_symmetric)
    monkeypatch.setattr(stepper, "_eigh_symmetric", sellas_own)  # hip's wrapper is back after the test
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 12))
    symmetric = 100 * (a + a.T)
    noise = rng.normal(size=(12, 12))
    round_off = symmetric + 3e-10 * np.linalg.norm(symmetric) * noise / np.linalg.norm(noise)
    with pytest.raises(ValueError, match=SELLA_ASYMMETRY):
        stepper._eigh_symmetric(round_off)  # Sella as it is
    tolerate_sella_round_off()
    tolerate_sella_round_off()  # idempotent: one wrapper
    assert stepper._eigh_symmetric.__wrapped__ is sellas_own
    values, _ = stepper._eigh_symmetric(round_off)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(0.5 * (round_off + round_off.T)), rtol=1e-12, atol=1e-9)
    asymmetric = symmetric + 1e-3 * np.linalg.norm(symmetric) * noise / np.linalg.norm(noise)
    with pytest.raises(ValueError, match=SELLA_ASYMMETRY):
        stepper._eigh_symmetric(asymmetric)
    atoms = triatomic(1.33, 1.1, 0.93)  # and Sella runs through the wrapper
    assert optimize(atoms, METHODS["rfo_bfgs_hip"], hessian_function=calculator_hessian).converged


def test_time_limit_stops_a_run_and_says_so():
    atoms = triatomic(1.33, 1.1, 0.93)
    result = optimize(atoms, METHODS["ase_fire"], max_steps=150, time_limit=0.0)
    assert result.timed_out and not result.converged and result.steps == 1
    unlimited = optimize(triatomic(1.33, 1.1, 0.93), METHODS["ase_fire"], max_steps=150)
    assert unlimited.converged and not unlimited.timed_out


def test_method_selection_and_spec_checks():
    assert [s.key for s in select_methods(RELAXATION_METHODS, ["ase_fire", "rfo_hip"])] == ["ase_fire", "rfo_hip"]
    with pytest.raises(ValueError, match="unknown methods"):
        select_methods(RELAXATION_METHODS, ["rfo_magic"])
    with pytest.raises(ValueError, match="needs a hessian_function"):
        optimize(triatomic(1.3), METHODS["rfo_hip"])
    with pytest.raises(ValueError, match="minima only"):
        optimize(triatomic(1.3), METHODS["ase_fire"], order=1)
    assert {s.model_hessian for s in RELAXATION_METHODS} == {"hip", "autodiff", "finite_difference", None}


def test_custom_criteria():
    loose = ConvergenceCriteria("mine", 1e-2, 1e-2, 1e-1, 1e-1)
    atoms = triatomic(1.33, 1.1, 0.93)
    assert optimize(atoms, METHODS["ase_fire"], loose).steps < optimize(
        triatomic(1.33, 1.1, 0.93), METHODS["ase_fire"], GAUSSIAN_CRITERIA["tight"], 400).steps


# ---- inputs --------------------------------------------------------------------------------------
def test_perturb_has_the_requested_rms():
    atoms = Atoms("H64", positions=np.random.default_rng(1).uniform(0, 20, (64, 3)))
    noisy = perturb(atoms, 0.5, np.random.default_rng(0), min_distance=0.0)
    rms = np.sqrt(((noisy.positions - atoms.positions) ** 2).sum(1).mean())
    assert rms == pytest.approx(0.5, rel=0.15)


def test_load_molecules_from_ase_files_and_horm_shards(tmp_path, horm_sample_path):
    import ase.io
    from helpers import read_horm_entries

    frames = [triatomic(1.2), triatomic(1.8)]
    path = tmp_path / "two.extxyz"
    ase.io.write(path, frames)
    (second,) = load_molecules(path, [1])
    assert second.name == "two.extxyz:1" and second.dft_hessian is None
    assert np.allclose(second.atoms.positions, frames[1].positions)
    with pytest.raises(ValueError, match=r"two\.extxyz: frame indices \[5\]"):
        load_molecules(path, [5])

    (entry,) = read_horm_entries([83])
    (mol,) = load_molecules(horm_sample_path, [83])
    n = int(entry.natoms)
    assert mol.name == "sample_100.lmdb:83"
    assert np.allclose(mol.dft_hessian, entry.hessian.double().numpy().reshape(3 * n, 3 * n))
    assert mol.atoms.numbers.tolist() == entry.charges.tolist()


# ---- bookkeeping -----------------------------------------------------------------------------------
def test_results_log_resumes_and_refuses_other_settings(tmp_path):
    log = ResultsLog(tmp_path, {"noise": 0.5}, ("molecule", "method"))
    log.add({"molecule": "a", "method": "rfo_hip", "steps": 3})
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"molecule": "b", "meth')  # a write cut short by a kill
    with pytest.warns(UserWarning, match="incomplete last line"):
        again = ResultsLog(tmp_path, {"noise": 0.5}, ("molecule", "method"))
    assert again.done(molecule="a", method="rfo_hip") and not again.done(molecule="b", method="rfo_hip")
    assert [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()] == again.rows
    with pytest.raises(ValueError, match=r"settings\.json.*noise: stored 0\.5, now 0\.3"):
        ResultsLog(tmp_path, {"noise": 0.3}, ("molecule", "method"))
