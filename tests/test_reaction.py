"""Tests of hip.reaction and hip.kinetics: reactant + product → TS → IRC → intended → barriers and k(T).

The analytic surface: a C–N–O triangle with two harmonic bonds r12 (C–N), r23 (N–O) (k, r0) and a
symmetric double well in the C–O distance, V(r13) = h((r13 − c)²/w² − 1)². Its minima have r12 = r23 =
r0 and r13 = c ∓ w (1.3 Å: C–O bonded by covalent radii; 1.9 Å: not), its saddle r13 = c, the barrier
is h both ways. The rate constant is checked against transition-state theory written out here with
scipy's CODATA constants: harmonic frequencies from the eigenvalues of the exact mass-weighted Hessian,
rigid-rotor partition functions from the moments of inertia, Eyring and Wigner by hand.
"""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import scipy.constants as sc
import torch
from ase import Atoms
from ase.build import molecule
from helpers import DoubleWell, double_well_energy

from hip.extrema import is_first_order_saddle
from hip.irc import INTENDED_RMSD_TOLERANCE, aligned_rmsd, equivalent_groups, same_structure, with_energy
from hip.kinetics import eyring_rate, stationary_point, wigner_kappa
from hip.optimize import OptimizationResult
from hip.reaction import (
    STAGES,
    ReactionSettings,
    StageRecord,
    bonds,
    check_reaction_pair,
    find_reaction,
)
from hip.reaction_state import from_state, to_state
from hip.vibrations import thermochemistry

K, R0, H, C, W = 30.0, 1.2, 0.5, 1.6, 0.3  # eV/Å², Å, eV, Å, Å
T = 298.15


#: the analytic surface (tests/helpers.py) with this file's constants
surface = partial(DoubleWell, K, R0, H, C, W)
energy_of = partial(double_well_energy, k=K, r0=R0, h=H, c=C, w=W)


def triangle(r13: float, r12: float = R0, r23: float = R0) -> Atoms:
    """C, N, O in the xy plane with the given distances (Å), N at the origin."""
    angle = math.acos((r12**2 + r23**2 - r13**2) / (2 * r12 * r23))
    return Atoms("CNO", positions=[[r12, 0, 0], [0, 0, 0], [r23 * math.cos(angle), r23 * math.sin(angle), 0]])


def r13(atoms: Atoms) -> float:
    return float(atoms.get_distance(0, 2))


# ---- transition-state theory by hand -----------------------------------------------------------------
def harmonic_wavenumbers(atoms: Atoms) -> np.ndarray:
    """Ascending wavenumbers (cm⁻¹, negative = imaginary) of the exact Hessian at a stationary point,
    where the six rigid-body eigenvalues of the mass-weighted Hessian are exactly zero."""
    x = torch.tensor(atoms.positions.reshape(-1), dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(energy_of, x).numpy()  # eV/Å²
    inv_sqrt_m = 1 / np.sqrt(np.repeat(atoms.get_masses(), 3))
    eigenvalues = np.linalg.eigvalsh(inv_sqrt_m[:, None] * hessian * inv_sqrt_m[None, :])  # eV/(Å²·amu)
    eigenvalues = np.sort(eigenvalues[np.argsort(np.abs(eigenvalues))[6:]])
    omega = np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues) * sc.e / (1e-20 * sc.atomic_mass))  # rad/s
    return omega / (2 * math.pi * 100 * sc.c)


def free_energy_differing_part(atoms: Atoms) -> float:
    """E + vibrational (ZPE + thermal) + rotational Gibbs energy, eV, of a non-linear molecule in the
    rigid-rotor harmonic-oscillator model, without the terms every geometry of these atoms shares
    (translation, the rotational constants and σ): G_rot = −kT·ln √(I_A·I_B·I_C) + const."""
    kt = sc.k * T / sc.e
    energy = float(energy_of(torch.tensor(atoms.positions.reshape(-1), dtype=torch.float64)))
    real = harmonic_wavenumbers(atoms)
    real = real[real > 0]
    x = sc.h * sc.c * 100 * real / (sc.k * T)
    g_vib = float(np.sum(0.5 * x * kt + kt * np.log(1 - np.exp(-x))))
    masses, positions = atoms.get_masses(), atoms.positions - atoms.get_center_of_mass()
    inertia = sum(m * (np.dot(p, p) * np.eye(3) - np.outer(p, p))
                  for m, p in zip(masses, positions, strict=True))
    return energy + g_vib - kt * 0.5 * math.log(np.linalg.det(inertia))


@pytest.fixture(scope="module")
def analytic_result():
    reactant, product = triangle(1.35, 1.25, 1.17), triangle(1.85, 1.15, 1.22)  # near, not at, the minima
    return find_reaction(reactant, product, surface())


@pytest.mark.slow
def test_the_pipeline_finds_the_saddle_and_an_irc_that_connects_reactant_and_product(analytic_result):
    result = analytic_result
    assert list(result.stages) == list(STAGES)
    assert all(record.success for record in result.stages.values()), result.as_dict()["stages"]
    assert r13(result.reactant) == pytest.approx(C - W, abs=1e-3)
    assert r13(result.product) == pytest.approx(C + W, abs=1e-3)
    assert r13(result.ts) == pytest.approx(C, abs=1e-3)
    assert result.ts.get_distance(0, 1) == pytest.approx(R0, abs=1e-3)
    nu = harmonic_wavenumbers(result.ts)
    assert nu[0] < -10 < 0 < nu[1]
    assert result.ts_frequencies[0] == pytest.approx(nu[0], rel=1e-4)
    # the IRC runs reactant → TS → product, its ends are the two minima
    distances = [r13(a) for a in result.irc]
    assert distances[0] == pytest.approx(C - W, abs=2e-3) and distances[-1] == pytest.approx(C + W, abs=2e-3)
    assert distances[result.irc_ts_index] == pytest.approx(C, abs=1e-3)
    assert result.stages["intended"].details["matches"] in (["reactant", "product"], ["product", "reactant"])
    assert bonds(result.reactant) == {(0, 1), (1, 2), (0, 2)} and bonds(result.product) == {(0, 1), (1, 2)}
    # every recorded stage has a time; the highest path image started the TS search
    assert all(record.seconds > 0 for record in result.stages.values())
    path_energies = result.stages["path"].details["energies"]
    assert result.stages["ts_search"].details["start_image"] == int(np.argmax(path_energies))


@pytest.mark.slow
def test_the_rate_constant_is_transition_state_theory_by_hand(analytic_result):
    energetics = analytic_result.energetics
    kt = sc.k * T / sc.e
    g_r, g_ts, g_p = (free_energy_differing_part(triangle(r)) for r in (C - W, C, C + W))
    nu_ts = abs(harmonic_wavenumbers(triangle(C))[0])
    kappa = 1 + (sc.h * sc.c * 100 * nu_ts / (sc.k * T)) ** 2 / 24
    rates = energetics.rate_constant_forward, energetics.rate_constant_reverse
    for barrier, rate in zip((g_ts - g_r, g_ts - g_p), rates, strict=True):
        assert rate == pytest.approx(kappa * sc.k * T / sc.h * math.exp(-barrier / kt), rel=2e-3)
    assert energetics.gibbs_barrier_forward == pytest.approx(g_ts - g_r, abs=5e-5)
    assert energetics.gibbs_barrier_reverse == pytest.approx(g_ts - g_p, abs=5e-5)
    assert energetics.barrier_forward == pytest.approx(H, abs=1e-5)
    assert energetics.barrier_reverse == pytest.approx(H, abs=1e-5)
    assert energetics.wigner_kappa == pytest.approx(kappa, rel=1e-4)
    assert energetics.reaction_gibbs_energy == pytest.approx(g_p - g_r, abs=5e-5)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_finished_stage(analytic_result):
    # as label_reactions.py keeps it between stages: strict JSON, back to the same numbers
    text = json.dumps(to_state(analytic_result), allow_nan=False)
    again = from_state(json.loads(text))
    np.testing.assert_array_equal(again.ts_hessian, analytic_result.ts_hessian)
    np.testing.assert_array_equal(again.irc[3].get_forces(), analytic_result.irc[3].get_forces())
    assert again.energetics == analytic_result.energetics and to_state(again) == json.loads(text)
    partial = from_state(json.loads(text))
    for name in STAGES[STAGES.index("irc"):]:
        del partial.stages[name]
    kept = {name: record.seconds for name, record in partial.stages.items()}
    partial.stages["irc"] = StageRecord(success=False, error="killed")  # a failed or unfinished stage reruns
    partial.stages["dft_verify"] = StageRecord(success=True)  # and nothing after it is kept
    result = find_reaction(triangle(1.0), triangle(2.0), surface(), result=partial)
    assert result is partial and list(result.stages) == list(STAGES)
    assert {name: result.stages[name].seconds for name in kept} == kept  # not rerun
    assert all(record.success for record in result.stages.values()), result.as_dict()["stages"]
    for key in ("barrier_forward", "gibbs_barrier_reverse", "rate_constant_forward"):
        assert getattr(result.energetics, key) == pytest.approx(getattr(analytic_result.energetics, key), rel=1e-6)


@pytest.mark.parametrize("relax_steps, found", [(150, True), (1, False)])
def test_an_end_that_stopped_at_a_saddle_is_displaced_and_relaxed_to_a_minimum(analytic_result, relax_steps, found):
    """A gradient-only relaxation can stop at a saddle (here the product is put at the surface's saddle, where
    the gradient vanishes): thermochemistry displaces it along its imaginary mode and relaxes it again, or,
    if that does not converge, fails and says why, instead of leaving the imaginary mode out silently."""
    partial = from_state(to_state(analytic_result))
    del partial.stages["thermochemistry"]
    partial.product = with_energy(triangle(C), float(energy_of(torch.tensor(triangle(C).positions.reshape(-1)))))
    result = find_reaction(triangle(1.0), triangle(2.0), surface(), ReactionSettings(relax_steps=relax_steps),
                           result=partial)
    record = result.stages["thermochemistry"]
    assert record.success == found and record.details["displaced"]["product"][0]["direction"] == 1
    if found:  # kept only where it keeps the saddle's bonds (C–O bonded at r13 = c): the well at c − w
        assert r13(result.product) == pytest.approx(C - W, abs=1e-3)
        assert result.energetics.barrier_reverse == pytest.approx(H, abs=1e-5)
    else:
        assert "the product is not a minimum" in record.error and result.energetics is None


def test_a_methyl_group_turned_by_120_degrees_is_the_same_structure():
    """The IRC of vinyl alcohol → acetaldehyde ends at acetaldehyde with its methyl hydrogens numbered
    otherwise than in the relaxed product: the same molecule, 0.83 Å apart without renumbering."""
    acetaldehyde = molecule("CH3CHO")
    (methyl,) = equivalent_groups(acetaldehyde)
    pairs = bonds(acetaldehyde)
    (carbon,) = {i + j - h for i, j in pairs for h in methyl if h in (i, j)}  # the methyl carbon
    (other,) = {i + j - carbon for i, j in pairs if carbon in (i, j) and not {i, j} & set(methyl)}
    turned = acetaldehyde.copy()
    axis = turned.positions[other] - turned.positions[carbon]
    hydrogens = turned[methyl]
    hydrogens.rotate(120, axis, center=turned.positions[carbon])
    turned.positions[methyl] = hydrogens.positions
    assert aligned_rmsd(acetaldehyde, turned) > INTENDED_RMSD_TOLERANCE
    same, rmsd = same_structure(acetaldehyde, turned, INTENDED_RMSD_TOLERANCE)
    assert same and rmsd < 0.02  # ASE's methyl is threefold to 0.015 Å
    broken = turned.copy()
    broken.positions[methyl[0]] += 2 * (broken.positions[methyl[0]] - broken.positions[carbon])  # a C–H bond gone
    assert not same_structure(acetaldehyde, broken, INTENDED_RMSD_TOLERANCE)[0]


def test_a_ts_guess_starts_the_search_instead_of_the_path():
    settings = ReactionSettings(relax_endpoints=False, images=3)  # the path's one inner image: the midpoint
    result = find_reaction(triangle(C - W), triangle(C + W), surface(), settings, ts_guess=triangle(C + 0.05, 1.25))
    assert result.stages["ts_search"].success and result.stages["ts_search"].details["start_image"] is None
    assert r13(result.ts) == pytest.approx(C, abs=1e-3)
    with pytest.raises(ValueError, match="TS guess has 2 atoms and reactant 3"):
        find_reaction(triangle(C - W), triangle(C + W), surface(), settings,
                      ts_guess=Atoms("CN", [[0, 0, 0], [1, 0, 0]]))


@pytest.mark.slow
def test_climbing_image_neb_and_initial_hessian_updates_find_the_same_saddle():
    settings = ReactionSettings(path="neb", images=7, hessian_every_step=False, relax_endpoints=False)
    result = find_reaction(triangle(C - W), triangle(C + W), surface(), settings)
    assert all(record.success for record in result.stages.values()), result.as_dict()["stages"]
    assert result.stages["relax_reactant"].details["skipped"]
    highest = result.path[result.stages["ts_search"].details["start_image"]]
    assert r13(highest) == pytest.approx(C, abs=0.05)  # the climbing image is close to the saddle already
    assert r13(result.ts) == pytest.approx(C, abs=1e-3)
    assert result.stages["ts_search"].details["hessian_calls"] == 1


def test_an_internal_coordinate_run_stopped_by_sellas_error_goes_on_in_cartesians(monkeypatch):
    """Sella's internal-to-Cartesian update can fail ("Geometry update ODE is taking too long to converge!",
    met in the DFT relaxation of HCN + H₂): the run goes on in Cartesians from there and says why."""
    import hip.reaction

    sella_error = "RuntimeError: Geometry update ODE is taking too long to converge!"
    real_optimize = hip.reaction.optimize

    def internal_fails(atoms, spec, criteria, steps, order, hessian, internal):
        if internal:
            return OptimizationResult(False, 1, 0.0, error=sella_error)
        return real_optimize(atoms, spec, criteria, steps, order, hessian, internal)

    monkeypatch.setattr(hip.reaction, "optimize", internal_fails)
    result = find_reaction(triangle(C - W + 0.05), triangle(C + W - 0.05), surface(), ReactionSettings())
    assert all(record.success for record in result.stages.values()), result.as_dict()["stages"]
    for stage in ("relax_reactant", "relax_product", "ts_search"):
        details = result.stages[stage].details
        assert details["coordinates"] == ["internal", "cartesian"] and details["internal_error"] == sella_error
    assert r13(result.ts) == pytest.approx(C, abs=1e-3)


def test_a_failed_stage_ends_the_run_with_its_reason():
    result = find_reaction(triangle(1.35, 1.3), triangle(1.85), surface(), ReactionSettings(relax_steps=1))
    assert list(result.stages) == ["relax_reactant"] == [result.failed_stage]
    record = result.stages["relax_reactant"]
    assert record.details["coordinates"] == ["internal", "cartesian"]  # a stalled internal run goes on in Cartesians
    assert "not converged in 2 steps" in record.error and record.steps == 2
    assert result.energetics is None and result.as_dict()["rate_constant_forward_s-1"] is None

    class Broken(DoubleWell):
        def get_hessian(self, atoms=None):
            raise RuntimeError("no Hessian today")

    result = find_reaction(triangle(1.35), triangle(1.85), Broken(K, R0, H, C, W))
    assert result.failed_stage == "relax_reactant"
    assert "RuntimeError: no Hessian today" in result.stages["relax_reactant"].error


def test_reaction_pairs_are_checked_and_the_message_names_what_differs():
    water, methanol = molecule("H2O"), molecule("CH3OH")
    with pytest.raises(ValueError, match=r"p\.xyz has 6 atoms and r\.xyz 3"):
        check_reaction_pair(water, methanol, "r.xyz", "p.xyz")
    swapped = water.copy()
    swapped.numbers = [1, 8, 1]
    with pytest.raises(ValueError, match=r"p\.xyz: atom 0 is H but r\.xyz has O there \(field 'numbers'\)"):
        check_reaction_pair(water, swapped, "r.xyz", "p.xyz")
    moved = water.copy()
    moved.rotate(40, "z")
    moved.translate([1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match=r"r\.xyz and p\.xyz are the same structure"):
        check_reaction_pair(water, moved, "r.xyz", "p.xyz")


def test_ts_success_is_exactly_one_mode_below_minus_ten_wavenumbers():
    assert is_first_order_saddle([-500.0, -9.0, 30.0])
    assert not is_first_order_saddle([-500.0, -11.0, 30.0])
    assert not is_first_order_saddle([-9.0, 30.0])


def test_eyring_and_wigner_against_constants():
    assert eyring_rate(0.0, T) == pytest.approx(sc.k * T / sc.h, rel=1e-6)
    barrier = 0.8
    assert eyring_rate(barrier, T, 2.0) == pytest.approx(2 * sc.k * T / sc.h * math.exp(-barrier * sc.e / (sc.k * T)),
                                                         rel=1e-4)  # ASE's k_B: CODATA 2014, ×31 in the exponent
    x = sc.h * sc.c * 100 * 1500.0 / (sc.k * T)
    assert wigner_kappa(-1500.0, T) == pytest.approx(1 + x**2 / 24, rel=1e-6) == wigner_kappa(1500.0, T)
    with pytest.raises(ValueError, match="temperature"):
        wigner_kappa(1000.0, 0.0)


def test_a_nearly_linear_molecule_is_analysed_as_linear():
    """A bend of 2e-3 Å (what an optimiser leaves) must not turn a bending mode into a third rotation."""

    def energy(x):  # bond springs and a harmonic bend, 1 + cos θ ≈ (π − θ)²/2, about the line
        p = x.reshape(3, 3)
        u, v = p[0] - p[1], p[2] - p[1]
        cos = (u @ v) / (u.norm() * v.norm())
        return 15.0 * ((u.norm() - 1.07) ** 2 + (v.norm() - 1.16) ** 2) + 2.0 * (1 + cos)

    linear = Atoms("HCN", positions=[[0, 0, -1.07], [0, 0, 0], [0, 0, 1.16]])
    bent = linear.copy()
    bent.positions[1, 0] = 2e-3
    hessian = {name: torch.autograd.functional.hessian(energy, torch.tensor(a.positions.reshape(-1))).numpy()
               for name, a in (("linear", linear), ("bent", bent))}
    exact, nearly = stationary_point(linear, hessian["linear"], 0.0, T), stationary_point(bent, hessian["bent"], 0.0, T)
    assert exact.thermo.geometry == nearly.thermo.geometry == "linear"
    assert nearly.thermo.entropy == pytest.approx(exact.thermo.entropy, rel=1e-4)
    assert len(nearly.thermo.frequencies) == 4
    raw = thermochemistry(hessian["bent"], bent, T)  # without straightening: three rotations, a bend lost
    assert raw.geometry == "nonlinear" and raw.entropy < exact.thermo.entropy - 1e-4


# ---- HCN ⇌ HNC (with DFT end to end in tests/test_react_script.py) ----------------------------------------


def test_a_complex_of_fragments_matches_by_its_bonds_and_its_irc_end_becomes_that_side():
    """H2CO → H2 + CO: the loose complex the IRC reaches has the product's bonds but H2 elsewhere; it is
    the product, and thermochemistry then uses the IRC's end. A single molecule still needs the geometry."""
    from hip.data.reactions import guess_pair
    from hip.reaction import StageRecord, _Pipeline

    reactant, product = molecule("H2CO"), Atoms("OCHH", [[0, 0, 0.6], [0, 0, -0.53], [0, 0.37, -3.3],
                                                          [0, -0.37, -3.3]])
    elsewhere = product.copy()
    elsewhere.positions[2:] += [3.0, 0.0, 2.0]
    pipeline = _Pipeline(reactant, product, None, ReactionSettings())
    pipeline.result.irc = [reactant.copy(), elsewhere]  # the ends: forward irc[-1], reverse irc[0]
    record = StageRecord()
    pipeline.intended(record)
    assert record.success and record.details["matches"] == ["product", "reactant"]
    assert record.details["forward"]["product"]["rmsd"] > INTENDED_RMSD_TOLERANCE
    np.testing.assert_array_equal(pipeline.result.product.positions, elsewhere.positions)
    assert record.details["replaced_by_irc_end"] == ["product"]

    cis, trans = guess_pair("hono_cis_trans")  # one fragment each, the same bonds
    pipeline = _Pipeline(cis, trans, None, ReactionSettings())
    pipeline.result.irc = [cis.copy(), cis.copy()]
    record = StageRecord()
    pipeline.intended(record)
    assert not record.success and record.details["matches"] == ["reactant", "reactant"]
