"""Tests of hip.calculator.HIPCalculator: the ASE door from a checkpoint to energies, forces and Hessians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.optimize import FIRE
from ase.vibrations import VibrationsData
from conftest import TINY_MODEL

from hip.calculator import HIPCalculator
from hip.data.graphs import collate_molecules
from hip.model.autodiff import autodiff_hessian, finite_difference_hessian
from hip.model.hip_equiformer import HIPEquiformerV2

#: HORM's isolated-atom reference energies, eV, as fitted in ../shared/horm/README.md (independent of hip).
HORM_REFERENCES = {"H": -16.71317, "C": -1035.52100, "N": -1489.14061, "O": -2046.24251}


def write_tiny_checkpoint(path, seed: int = 0):
    """Save a randomly initialised tiny model in our Lightning format (``model.`` keys, kwargs in
    ``hyper_parameters["model"]``) at ``path``; returns ``path``."""
    torch.manual_seed(seed)
    model = HIPEquiformerV2(**TINY_MODEL).eval()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.config}}, path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def calc(tiny_checkpoint):
    return HIPCalculator(tiny_checkpoint)


def reference_outputs(model, atoms: Atoms, seed: int = 0) -> dict[str, torch.Tensor]:
    """``model(batch)`` of one molecule with the edge-frame roll drawn from ``seed``."""
    batch = collate_molecules([atoms], model.graph_builder())
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(batch)


def test_results_equal_model_output(calc):
    atoms = molecule("CH3OH")
    n = len(atoms)
    out = reference_outputs(calc.model, atoms)
    hessian = calc.get_hessian(atoms)
    assert hessian.shape == (3 * n, 3 * n) and hessian.dtype == np.float64
    np.testing.assert_array_equal(hessian, out["hessian"].double().view(3 * n, 3 * n).numpy())
    np.testing.assert_array_equal(calc.get_forces(atoms), out["forces"].double().numpy())
    # energy="total" is HORM's ae plus the isolated-atom references of the molecule's atoms
    total = float(out["energy"]) + sum(HORM_REFERENCES[s] for s in atoms.get_chemical_symbols())
    assert calc.get_potential_energy(atoms) == pytest.approx(total, abs=1e-9)
    calc.set(energy="ae")
    try:
        assert calc.get_potential_energy(atoms) == pytest.approx(float(out["energy"]), abs=1e-12)
    finally:
        calc.set(energy="total")


def test_repeated_calls_are_identical_and_leave_the_global_rng_alone(calc):
    atoms = molecule("CH3CHO")
    state = torch.get_rng_state()
    first = (calc.get_potential_energy(atoms), calc.get_forces(atoms), calc.get_hessian(atoms))
    for _ in range(2):
        calc.reset()  # drop the cache: recompute
        again = (calc.get_potential_energy(atoms), calc.get_forces(atoms), calc.get_hessian(atoms))
        assert again[0] == first[0]
        np.testing.assert_array_equal(again[1], first[1])
        np.testing.assert_array_equal(again[2], first[2])
    assert torch.equal(torch.get_rng_state(), state)


def test_one_forward_serves_all_properties(calc, monkeypatch):
    atoms = molecule("H2O")
    calls = []
    original = calc.model.forward
    monkeypatch.setattr(calc.model, "forward", lambda *a, **k: calls.append(k) or original(*a, **k))
    calc.reset()
    calc.get_potential_energy(atoms)
    calc.get_forces(atoms)
    calc.get_hessian(atoms)
    assert len(calls) == 1  # cached, as ASE calculators do
    moved = atoms.copy()
    moved.positions[0, 0] += 0.01
    calc.get_hessian(moved)
    assert len(calls) == 2  # a new geometry is a new calculation


@pytest.mark.parametrize("method", ["autodiff", "finite_difference"])
def test_baseline_hessians_equal_hip_model_autodiff(calc, method):
    atoms = molecule("HCOOH")
    n = len(atoms)
    batch = collate_molecules([atoms], calc.model.graph_builder())
    if method == "autodiff":
        torch.manual_seed(0)
        expected = autodiff_hessian(calc.model, batch)
    else:
        expected = finite_difference_hessian(calc.model, batch, seed=0)
    calc.hessian_method = method
    try:
        got = calc.get_hessian(atoms)
        np.testing.assert_array_equal(got, expected.double().view(3 * n, 3 * n).numpy())
        hip_out = reference_outputs(calc.model, atoms)
        np.testing.assert_array_equal(calc.get_forces(atoms), hip_out["forces"].double().numpy())
    finally:
        calc.hessian_method = "hip"
    # switching back drops the cached baseline Hessian
    np.testing.assert_array_equal(calc.get_hessian(atoms), hip_out["hessian"].double().view(3 * n, 3 * n).numpy())


def test_ase_vibrations_and_optimiser_accept_it(calc):
    atoms = molecule("NH3")
    atoms.calc = calc
    hessian = calc.get_hessian(atoms)
    frequencies = VibrationsData.from_2d(atoms, hessian).get_frequencies()
    assert frequencies.shape == (3 * len(atoms),)
    start = atoms.positions.copy()
    FIRE(atoms, logfile=None).run(fmax=1e-3, steps=3)
    assert not np.allclose(atoms.positions, start)  # forces reached ASE and moved the atoms
    np.testing.assert_array_equal(atoms.get_forces(), calc.get_forces(atoms))


def test_predict_matches_single_calls(calc):
    molecules = [molecule("H2O"), molecule("CH3CH2OH"), molecule("HCN"), molecule("CH4")]
    results = calc.predict(molecules, batch_size=3)
    assert len(results) == 4
    for atoms, result in zip(molecules, results, strict=True):
        n = len(atoms)
        assert result["hessian"].shape == (3 * n, 3 * n) and result["forces"].shape == (n, 3)
        calc.reset()
        # a batch draws its edge-frame rolls together, and sums in another order: equal up to rounding
        assert result["energy"] == pytest.approx(calc.get_potential_energy(atoms), abs=1e-4)
        np.testing.assert_allclose(result["forces"], calc.get_forces(atoms), atol=1e-4)
        np.testing.assert_allclose(result["hessian"], calc.get_hessian(atoms), atol=1e-4)
    no_hessian = calc.predict(molecules[:2], hessian=False)
    assert "hessian" not in no_hessian[0]
    assert no_hessian[1]["energy"] == pytest.approx(results[1]["energy"], abs=1e-4)


def _charged():
    atoms = molecule("H2O")
    atoms.info["charge"] = 1
    return atoms


def _triplet():
    atoms = molecule("H2O")
    atoms.info["spin"] = 3
    return atoms


def _magnetic():
    atoms = molecule("H2O")
    atoms.set_initial_magnetic_moments([0, 1, 1])
    return atoms


def _radical():
    atoms = molecule("CH3")
    atoms.set_initial_magnetic_moments(None)  # no spin given: the odd electron count gives it away
    return atoms


def _periodic():
    atoms = molecule("H2O", vacuum=5.0)
    atoms.pbc = True
    return atoms


def _overlapping():
    atoms = molecule("CH4")
    atoms.positions[1] = atoms.positions[0] + [0.05, 0, 0]
    return atoms


@pytest.mark.parametrize(("make", "match"), [
    (lambda: molecule("CH3Cl"), r"field 'numbers' has elements \['Cl'\]"),
    (lambda: molecule("CF4"), r"elements \['F'\] the model was not trained on"),
    (_periodic, r"field 'pbc' is \[True, True, True\]"),
    (_charged, r"atoms.info\['charge'\] = 1"),
    (_triplet, r"atoms.info\['spin'\] = 3"),
    (_magnetic, "field 'initial_magmoms'"),
    (_radical, "9 electrons"),
    (_overlapping, "field 'pos' has atoms 0 and 1 only 0.0500 Å apart"),
])
def test_bad_molecules_are_refused_with_the_field(calc, make, match):
    atoms = make()
    with pytest.raises(ValueError, match=match):
        calc.get_hessian(atoms)
    with pytest.raises(ValueError, match=f"molecule 1 \\({atoms.get_chemical_formula()}\\).*{match}"):
        calc.predict([molecule("H2O"), atoms])


def test_changing_the_charge_is_a_new_calculation(calc):
    atoms = molecule("H2O")
    calc.get_potential_energy(atoms)
    atoms.info["charge"] = -1
    with pytest.raises(ValueError, match="charge"):
        calc.get_potential_energy(atoms)


def test_construction(tiny_checkpoint, tmp_path):
    model = HIPEquiformerV2(**TINY_MODEL)
    calc = HIPCalculator(model)
    assert calc.model is model and calc.device == torch.device("cpu")  # wraps the loaded model, no copy
    missing = tmp_path / "absent.ckpt"
    with pytest.raises(FileNotFoundError, match=f"checkpoint {missing} does not exist"):
        HIPCalculator(missing)
    with pytest.raises(ValueError, match="hessian_method must be one of"):
        HIPCalculator(model, hessian_method="analytic")
    with pytest.raises(ValueError, match="energy must be one of"):
        HIPCalculator(model, energy="free")
    with pytest.raises(ValueError, match=r"elements \[9\] have none"):
        HIPCalculator(model, elements=[1, 6, 7, 8, 9])
    with_f = HIPCalculator(model, elements=[1, 6, 7, 8, 9], energy="ae")
    assert with_f.predict([molecule("CF4")])[0]["hessian"].shape == (15, 15)
    with pytest.raises(ValueError, match="hessian_method must be one of"):
        calc.hessian_method = "analytic"
    assert calc.hessian_method == "hip"


def test_switching_method_recomputes_the_last_atoms(tiny_checkpoint):
    calc = HIPCalculator(tiny_checkpoint)
    with pytest.raises(ValueError, match="no atoms given and none calculated yet"):
        calc.get_hessian()
    atoms = molecule("H2O")
    hip = calc.get_hessian(atoms)
    calc.hessian_method = "autodiff"
    autodiff = calc.get_hessian()  # the last atoms, with the new method
    batch = collate_molecules([atoms], calc.model.graph_builder())
    torch.manual_seed(0)
    np.testing.assert_array_equal(autodiff, autodiff_hessian(calc.model, batch).double().view(9, 9).numpy())
    assert not np.array_equal(hip, autodiff)
