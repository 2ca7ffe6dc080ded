"""Tests of hip.calculator.HIPCalculator: the ASE door from a checkpoint to energies, forces and Hessians."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.optimize import FIRE
from ase.vibrations import VibrationsData
from helpers import TINY_MODEL, periodic_water

from hip.calculator import HIPCalculator
from hip.data.graphs import collate_molecules
from hip.model.autodiff import autodiff_hessian, finite_difference_hessian
from hip.model.hip_equiformer import HIPEquiformerV2

#: HORM's isolated-atom reference energies, eV, as fitted in ../shared/horm/README.md (independent of hip).
HORM_REFERENCES = {"H": -16.71317, "C": -1035.52100, "N": -1489.14061, "O": -2046.24251}


@pytest.fixture(scope="module")
def calc(tiny_checkpoint):
    return HIPCalculator(tiny_checkpoint)


def reference_outputs(model, atoms: Atoms, seed: int = 0) -> dict[str, torch.Tensor]:
    """``model(batch)`` of one molecule, positions centred on their mean as the calculator does (the
    model is translation-invariant; centring changes only float32 rounding), with the edge-frame roll
    drawn from ``seed``."""
    batch = collate_molecules([(atoms.numbers, atoms.positions - atoms.positions.mean(0))], model.graph_builder())
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
    batch = collate_molecules([(atoms.numbers, atoms.positions - atoms.positions.mean(0))], calc.model.graph_builder())
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


def _overlapping():
    atoms = molecule("CH4")
    atoms.positions[1] = atoms.positions[0] + [0.05, 0, 0]
    return atoms


@pytest.mark.parametrize(("make", "match"), [
    (lambda: molecule("CH3Cl"), r"field 'numbers' has elements \['Cl'\]"),
    (lambda: molecule("CF4"), r"elements \['F'\] the model was not trained on"),
    (partial(periodic_water, 5.0), r"field 'pbc' is \[True, True, True\]"),
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


# ---- precision ---------------------------------------------------------------------------------

SHIPPED = Path(__file__).resolve().parents[1] / "ckpt" / "hip_small.ckpt"


def test_float64_agrees_with_float32_to_its_rounding_and_is_float64_throughout():
    atoms = molecule("CH3OH")
    c32, c64 = HIPCalculator(SHIPPED), HIPCalculator(SHIPPED, dtype="float64")
    assert {p.dtype for p in c64.model.parameters()} == {torch.float64}
    assert {b.dtype for b in c64.model.buffers() if b.is_floating_point()} == {torch.float64}
    seen = []  # dtypes of every floating tensor any submodule returns
    hooks = [m.register_forward_hook(lambda _, __, out: seen.extend(
        t.dtype for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)
        and t.is_floating_point())) for m in c64.model.modules()]
    try:
        c64.calculate(atoms.copy(), ["energy", "forces", "hessian"])
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and set(seen) == {torch.float64}
    r64 = dict(c64.results)
    c32.calculate(atoms.copy(), ["energy", "forces", "hessian"])
    r32 = c32.results
    for key in ("forces", "hessian"):
        assert r64[key].dtype == np.float64
        scale = np.abs(r64[key]).max()
        assert np.abs(r32[key] - r64[key]).max() <= 1e-5 * scale  # float32: ε = 6e-8, a few hundred roundings
        assert not np.array_equal(r32[key], r64[key])  # and they did run in different precisions
    c32.set(energy="ae"), c64.set(energy="ae")
    assert c32.get_potential_energy(atoms) == pytest.approx(c64.get_potential_energy(atoms), rel=1e-5)
    assert HIPCalculator(SHIPPED).model.SO3_rotation[0].mapping.to_m.dtype == torch.float32  # a fresh load


def test_unknown_dtype_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\), got 'float16'"):
        HIPCalculator(tiny_checkpoint, dtype="float16")


# ---- a single atom -----------------------------------------------------------------------------

@pytest.mark.parametrize("symbol", ["C", "O"])
def test_single_atom_has_an_energy_and_no_vibrational_modes(calc, symbol):
    from hip.extrema import NO_VIBRATIONAL_MODES, extremum_type
    from hip.vibrations import vibrational_analysis, zero_point_energy

    atom = Atoms(symbol, positions=[[1.0, 2.0, 3.0]])
    energy = calc.get_potential_energy(atom)
    assert np.isfinite(energy)
    assert energy - HORM_REFERENCES[symbol] == pytest.approx(reference_outputs(calc.model, atom)["energy"].item(),
                                                             abs=1e-6)
    np.testing.assert_array_equal(calc.get_forces(atom), np.zeros((1, 3)))  # no neighbours, no force
    hessian = calc.get_hessian(atom)
    assert hessian.shape == (3, 3)
    modes = vibrational_analysis(hessian, atom.positions, atom.numbers)
    assert modes.frequencies.shape == (0,) and modes.eigenvectors.shape == (3, 0)
    assert extremum_type(0, n_modes=len(modes.frequencies)) == NO_VIBRATIONAL_MODES
    assert zero_point_energy(hessian, atom.positions, atom.numbers) == 0.0
    # in a batch with a molecule (which has edges) the atom gets the same energy
    batched = calc.predict([atom, molecule("H2O")], batch_size=2)
    assert batched[0]["energy"] == pytest.approx(energy, abs=1e-5)
    assert any(w.startswith("domain_unknown") for w in batched[0]["warnings"])  # the tiny file has no record
