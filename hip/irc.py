"""Transition-state checks by the intrinsic reaction coordinate (paper A.6.2, stage 3).

:func:`irc_verify` follows Sella's IRC from a transition state both ways, relaxes both ends with
RS-RFO (:func:`hip.optimize.optimize`) and classifies them by their negative modes
(:func:`hip.optimize.count_negative_modes`); :func:`same_structure` says whether an end is a given
reactant or product (same covalent bonds, aligned RMSD) and :func:`check_reaction_pair` refuses a pair that
cannot react; :func:`ensure_minimum` makes a relaxed end a true minimum (no imaginary mode);
:class:`FrameRecorder` and :func:`irc_branch` keep the IRC's geometries for output. Units: positions Å,
Hessians eV/Å², IRC steps Å·√amu.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator

from hip.convergence import GAUSSIAN_CRITERIA, ConvergenceCriteria
from hip.extrema import TS_THRESHOLD_CM1, count_imaginary
from hip.optimize import (
    OPTIMIZATION_ERRORS,
    CountedHessian,
    HessianFunction,
    OptimizerSpec,
    count_negative_modes,
    optimize,
)

#: An IRC end is the reactant (product) if it has the same bonds and an aligned RMSD below this, Å:
#: loose enough for soft modes (methyl rotations, floppy angles) that relax differently, while the
#: bonds decide the chemistry.
INTENDED_RMSD_TOLERANCE = 0.3
#: Bonds are pairs closer than this × the sum of covalent radii (:func:`hip.domain.covalent_bonds`): real
#: bonds exceed that sum by up to 20 % (C–H 1.09 Å against 0.31 + 0.76 Å; H₂ 0.744 Å at ωB97X/6-31G(d)
#: against 0.62 Å, which the usual 1.2 misses), half-broken ones at a saddle by more (N–H 1.32 Å against
#: 1.02 Å in HC̈–NH₂ → HCN + H₂, which 1.3 would count). Stricter than
#: :data:`hip.domain.FRAGMENT_BOND_SCALE` (1.5), which keeps stretched TS bonds together.
INTENDED_BOND_SCALE = 1.25


def aligned_rmsd(a: Atoms, b: Atoms) -> float:
    """RMSD (Å) between two geometries of the same atoms after optimal superposition (ASE's Kabsch fit).

    Raises:
        ValueError: the atoms differ.
    """
    from ase.build import minimize_rotation_and_translation

    if a.numbers.tolist() != b.numbers.tolist():
        raise ValueError(f"cannot compare {a.get_chemical_formula()} with {b.get_chemical_formula()}: "
                         "different atoms")
    moved = b.copy()
    minimize_rotation_and_translation(a, moved)
    return float(np.sqrt(((a.positions - moved.positions) ** 2).sum(1).mean()))


def bonds(atoms: Atoms) -> frozenset[tuple[int, int]]:
    """Atom pairs (i < j) closer than :data:`INTENDED_BOND_SCALE` × the sum of their covalent radii
    (:func:`hip.domain.covalent_bonds`)."""
    from hip.domain import covalent_bonds

    close = covalent_bonds(atoms.numbers, atoms.positions, INTENDED_BOND_SCALE)
    return frozenset((int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(close, 1)), strict=True))


#: Perpendicular force (eV/Å) to which each IRC step's inner loop converges (Sella's default: 0.01).
IRC_INNER_FMAX = 0.05


def n_fragments(atoms: Atoms) -> int:
    """Number of covalently bonded fragments at :data:`INTENDED_BOND_SCALE` (:func:`hip.domain.fragments`)."""
    from hip.domain import fragments

    return len(fragments(atoms.numbers, atoms.positions, INTENDED_BOND_SCALE))


def equivalent_groups(atoms: Atoms) -> list[list[int]]:
    """Groups of two or more atoms of one element whose only bond is to the same atom (the hydrogens of a
    methyl or an amino group): numbering them otherwise is the same molecule."""
    neighbours: dict[int, list[int]] = {i: [] for i in range(len(atoms))}
    for i, j in bonds(atoms):
        neighbours[i].append(j)
        neighbours[j].append(i)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, bonded in neighbours.items():
        if len(bonded) == 1:
            groups.setdefault((bonded[0], int(atoms.numbers[i])), []).append(i)
    return [group for group in groups.values() if len(group) > 1]


def same_structure(a: Atoms, b: Atoms, rmsd_tolerance: float) -> tuple[bool, float]:
    """(same bonds and aligned RMSD < ``rmsd_tolerance`` Å, that RMSD) for two geometries of the same atoms.

    The RMSD is the smallest over renumberings of :func:`equivalent_groups` (each group's permutations tried
    in turn, the others held), so a methyl group turned by 120° is the same structure, as in a
    symmetry-corrected RMSD."""
    same_bonds, rmsd, order = bonds(a) == bonds(b), aligned_rmsd(a, b), np.arange(len(b))
    for group in equivalent_groups(b) if same_bonds else []:
        trials = []
        for permutation in itertools.permutations(group):
            trial = order.copy()
            trial[group] = permutation
            trials.append((aligned_rmsd(a, b[trial]), trial))
        rmsd, order = min(trials, key=lambda trial: trial[0])
    return same_bonds and rmsd < rmsd_tolerance, rmsd


#: Two geometries with the same bonds and an aligned RMSD below this (Å) are the same structure.
IDENTICAL_RMSD = 0.05


def check_same_atoms(first: Atoms, second: Atoms, first_name: str, second_name: str) -> None:
    """Raise ValueError naming both unless they are the same atoms in the same order (field ``numbers``)."""
    if len(first) != len(second):
        raise ValueError(f"{second_name} has {len(second)} atoms and {first_name} {len(first)}: give the "
                         "same atoms in the same order")
    differ = np.nonzero(first.numbers != second.numbers)[0]
    if len(differ):
        i = int(differ[0])
        raise ValueError(f"{second_name}: atom {i} is {second.get_chemical_symbols()[i]} but {first_name} has "
                         f"{first.get_chemical_symbols()[i]} there (field 'numbers'): give the same atoms in the "
                         "same order")


def check_reaction_pair(reactant: Atoms, product: Atoms, reactant_name: str = "reactant",
                        product_name: str = "product") -> None:
    """Refuse a reactant and product that are not the same atoms in the same order, or the same structure.

    Raises:
        ValueError: naming both inputs: different atom counts; the first index whose element differs
            (field ``numbers``); the same bonds and an aligned RMSD below :data:`IDENTICAL_RMSD`.
    """
    check_same_atoms(reactant, product, reactant_name, product_name)
    same, rmsd = same_structure(reactant, product, IDENTICAL_RMSD)
    if same:
        raise ValueError(f"{reactant_name} and {product_name} are the same structure (same bonds, aligned RMSD "
                         f"{rmsd:.3f} Å): nothing to react")


@dataclass
class IRCResult:
    """Sella's IRC from a transition state in both directions, the end points relaxed and classified.

    Attributes:
        verified: both end points relaxed to minima (no negative mode) that are distinct from each
            other (RMSD > ``min_rmsd``): the TS connects two minima.
        endpoints: the relaxed end points (forward, reverse); positions Å.
        endpoint_negative_modes: negative modes of each end point's Hessian.
        endpoint_converged: whether each end-point relaxation converged.
        rmsd: aligned RMSD between the two end points, Å.
        wall_time: seconds for both directions and the relaxations.
        timed_out: the time limit ended the check before it finished (then not verified).
        error: the first error met, ``""`` if none.
    """

    verified: bool
    timed_out: bool = False
    endpoints: list[Atoms] = field(default_factory=list)
    endpoint_negative_modes: list[int] = field(default_factory=list)
    endpoint_converged: list[bool] = field(default_factory=list)
    rmsd: float = math.nan
    wall_time: float = 0.0
    error: str = ""


def irc_verify(ts: Atoms, make_calculator: Callable[[], Calculator], hessian_function: HessianFunction,
               criteria: ConvergenceCriteria = GAUSSIAN_CRITERIA["default"], irc_steps: int = 30,
               irc_dx: float = 0.1, relax_steps: int = 150, min_rmsd: float = 0.1,
               time_limit: float | None = None) -> IRCResult:
    """Follow the IRC from ``ts`` both ways (Sella), relax both ends to minima and check they differ.

    Each direction starts along the lowest mode of the mass-weighted Hessian from ``hessian_function``
    and takes up to ``irc_steps`` steps of ``irc_dx`` (Å·√amu), stopping early once the energy rises
    (the path's minimum is passed: steps of fixed length oscillate there, as in pysisyphus, which stops
    the same way) or the forces fall below the looser of ``criteria.max_force`` and Gaussian's default
    (the end is relaxed to ``criteria`` next, so tight criteria need not be met by the IRC's steps).
    Each end point is then relaxed with RS-RFO and TS-BFGS updates from an initial Hessian of the same
    source (``criteria``, ``relax_steps``), and its negative modes are counted
    (:func:`count_negative_modes`). ReactBench's check that the ends are the reaction's known reactant
    and product needs those; without them "verified" means two distinct minima (paper A.6.2, stage 3).

    Args:
        ts: the transition state (positions Å; not changed).
        make_calculator: a fresh calculator for each IRC direction and relaxation (e.g.
            ``lambda: WorkEnergy(calc)``: a :class:`WorkEnergy` path must not jump between runs).
        hessian_function: ``atoms → (3N, 3N)`` eV/Å² (the method's own Hessian).
        criteria: for the IRC's force stop and the end-point relaxations.
        irc_steps, irc_dx: IRC budget per direction and step length.
        relax_steps: budget of each end-point relaxation.
        min_rmsd: end points closer than this (Å, aligned) count as the same minimum.
        time_limit: seconds for the whole check (IRC steps and relaxations stop when it is spent; the
            check then fails with ``timed_out``); None: no limit.

    Returns:
        :class:`IRCResult`; errors of :data:`OPTIMIZATION_ERRORS` are recorded in ``error`` and make
        the check fail.
    """
    from sella import IRC

    start = time.perf_counter()
    deadline = math.inf if time_limit is None else start + time_limit
    result = IRCResult(False)
    # the Hessian source is hessian_function; "hip" only satisfies the spec's check
    relax_spec = OptimizerSpec("irc_end", "RFO-BFGS", "sella", "hip")
    try:
        for direction in ("forward", "reverse"):
            end = ts.copy()
            end.calc = make_calculator()
            irc = IRC(end, logfile=None, dx=irc_dx, hessian_function=CountedHessian(hessian_function),
                      keep_going=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "IRC inner loop failed": the relaxation follows
                fmax = max(criteria.fmax_ev_per_a(), GAUSSIAN_CRITERIA["default"].fmax_ev_per_a())
                previous = math.inf
                # each step's inner loop to 0.05 eV/Å perpendicular force (Sella: 0.01): the ends are relaxed
                # next, so a path this close serves, at a third of the gradients
                for _ in irc.irun(fmax=fmax, fmax_inner=IRC_INNER_FMAX, steps=irc_steps, direction=direction):
                    energy = end.get_potential_energy()  # of the step just taken: no new calculation
                    if time.perf_counter() > deadline or energy > previous:  # past the path's minimum
                        break
                    previous = energy
            end = end.copy()
            end.calc = make_calculator()
            remaining = None if time_limit is None else max(deadline - time.perf_counter(), 0.0)
            relaxed = optimize(end, relax_spec, criteria, relax_steps, 0, hessian_function, time_limit=remaining)
            if relaxed.error:
                raise RuntimeError(f"relaxing the {direction} IRC end point: {relaxed.error}")
            if relaxed.timed_out or time.perf_counter() > deadline:
                result.timed_out = True
                break
            result.endpoints.append(end)
            result.endpoint_converged.append(relaxed.converged)
            result.endpoint_negative_modes.append(count_negative_modes(hessian_function(end), end))
        if not result.timed_out:
            result.rmsd = aligned_rmsd(*result.endpoints)
            result.verified = (all(result.endpoint_converged) and result.endpoint_negative_modes == [0, 0]
                               and result.rmsd > min_rmsd)
    except OPTIMIZATION_ERRORS as e:
        result.error = f"{type(e).__name__}: {e}"
    result.wall_time = time.perf_counter() - start
    return result


#: Å, how far the atom that moves most is displaced along the imaginary mode of a relaxation that stopped
#: at a saddle (:func:`ensure_minimum`) before it is relaxed again.
MINIMUM_DISPLACEMENT = 0.1


@dataclass
class MinimumCheck:
    """What :func:`ensure_minimum` found: the ``atoms`` kept, their ``hessian`` (eV/Å²; None: no minimum
    found), the ``frequencies`` (cm⁻¹) of the geometry it was given and the displaced relaxations ``tries``."""

    atoms: Atoms
    hessian: np.ndarray | None
    frequencies: np.ndarray
    tries: list[dict] = field(default_factory=list)


def ensure_minimum(atoms: Atoms, hessian_function: HessianFunction,
                   relax: Callable[[Atoms], tuple[Atoms, bool, int]],
                   amplitude: float = MINIMUM_DISPLACEMENT) -> MinimumCheck:
    """``atoms`` with its Hessian if it has no imaginary mode below −:data:`hip.extrema.TS_THRESHOLD_CM1`
    (10 cm⁻¹); else, as a chemist would, it is displaced by +``amplitude`` and then −``amplitude`` Å along its
    lowest mode (:func:`hip.vibrations.displaced_along_mode`) and relaxed again (``relax(atoms)`` →
    (relaxed atoms, converged, steps)), and the first that converges to a minimum with the same bonds is kept.
    A gradient-only convergence test cannot tell a minimum from a saddle: a symmetric start (a planar
    complex, a linear chain) keeps its symmetry and can stop at a saddle of the full surface."""
    from hip.vibrations import displaced_along_mode, vibrational_analysis

    def analyse(geometry: Atoms) -> tuple[np.ndarray, Any]:
        hessian = hessian_function(geometry)
        return hessian, vibrational_analysis(hessian, geometry.positions, geometry.numbers, geometry.get_masses())

    hessian, modes = analyse(atoms)
    check = MinimumCheck(atoms, hessian, modes.frequencies.numpy())
    if count_imaginary(check.frequencies, TS_THRESHOLD_CM1) == 0:
        return check
    check.hessian = None
    for sign in (1, -1):
        moved, converged, steps = relax(displaced_along_mode(atoms, modes, 0, sign * amplitude))
        same_bonds = bonds(moved) == bonds(atoms)
        attempt = {"direction": sign, "converged": converged, "steps": steps, "same_bonds": same_bonds}
        check.tries.append(attempt)
        if converged and same_bonds:
            moved_hessian, moved_modes = analyse(moved)
            attempt["lowest_frequencies_cm1"] = moved_modes.frequencies[:3].tolist()
            if count_imaginary(moved_modes.frequencies, TS_THRESHOLD_CM1) == 0:
                check.atoms, check.hessian = moved, moved_hessian
                return check
    return check


# ---- the IRC's frames ------------------------------------------------------------------------------
class FrameRecorder(Calculator):
    """An ASE calculator that passes ``inner``'s energy and forces through and keeps every geometry it is
    asked about in ``frames``, with ``base``'s energy (e.g. the IRC's geometries with the model's energy
    where Sella sees :class:`hip.optimize.WorkEnergy`)."""

    implemented_properties: ClassVar[list[str]] = ["energy", "forces"]

    def __init__(self, inner: Calculator, base: Calculator):
        super().__init__()
        self.inner, self.base, self.frames = inner, base, []

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        forces = self.inner.get_forces(self.atoms)
        self.results = {"energy": float(self.inner.get_potential_energy(self.atoms)), "forces": forces}
        self.frames.append(with_energy(self.atoms, self.base.get_potential_energy(self.atoms), forces))


def with_energy(atoms: Atoms, energy: float, forces: np.ndarray | None = None) -> Atoms:
    """A copy of ``atoms`` (numbers, positions) holding ``energy`` eV (and ``forces`` eV/Å)."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    out.calc = SinglePointCalculator(out, energy=float(energy), forces=forces)
    return out


def irc_branch(frames: list[Atoms], ts: Atoms, end: Atoms, spacing: float = 0.01) -> list[Atoms]:
    """``frames`` kept where their mass-weighted distance from ``ts`` grows by ``spacing`` (Å·√amu) and
    stays below that of ``end``, then ``end``."""
    sqrt_m = np.sqrt(ts.get_masses())[:, None]
    distance = [float(np.linalg.norm(sqrt_m * (a.positions - ts.positions))) for a in [*frames, end]]
    kept, farthest = [], 0.0
    for frame, d in zip(frames, distance, strict=False):
        if farthest + spacing < d < distance[-1] - spacing:
            kept.append(frame)
            farthest = d
    return [*kept, end]
