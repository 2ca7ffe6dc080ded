"""Geometry optimisation and transition-state search driven by Hessians (paper §2.3, §4, A.6).

The paper's downstream experiments compare Hessians by what they do for restricted-step rational
function optimisation: RS-RFO for minima (Fig. 3), RS-P-RFO for first-order saddles (Fig. 4), and
the harmonic analysis behind the zero-point energy (Table 2). The optimisers here are Sella's
(ASE-native: ``order=0`` RS-RFO, ``order=1`` RS-P-RFO); this module only wires a Hessian source into
them, applies the paper's convergence criteria and records what happened. Any ASE calculator works; a
Hessian source is a function ``atoms → (3N, 3N) eV/Å²`` array, normally ``atoms.calc.get_hessian`` of a
:class:`hip.calculator.HIPCalculator` whose ``hessian_method`` is ``"hip"``, ``"autodiff"`` or
``"finite_difference"``.

Pieces:

* :func:`count_negative_modes` (frequency analysis, the threshold of ``eval.py``'s Table 3);
* convergence: :class:`~hip.convergence.ConvergenceCriteria` and
  :data:`~hip.convergence.GAUSSIAN_CRITERIA` (Table 13, Ha/Bohr and Bohr; :mod:`hip.convergence`);
* optimisers: :class:`OptimizerSpec`, :class:`CountedHessian`, :class:`WorkEnergy`,
  :func:`make_optimizer`, :func:`optimize` → :class:`OptimizationResult`.

Elsewhere: the IRC check of a found transition state (:mod:`hip.irc`), DFT verification and a DFT ASE
calculator (:mod:`hip.dft`), and the paper's method tables and the benchmark harness
(:mod:`hip.benchmarks`).

Units: positions Å, energies eV, forces eV/Å, Hessians eV/Å² everywhere except the convergence
criteria, which are stated, as in Gaussian and the paper, in Hartree/Bohr (forces) and Bohr (steps).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from hip.constants import BOHR_TO_ANGSTROM, HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2
from hip.convergence import GAUSSIAN_CRITERIA, Convergence, ConvergenceCriteria, remove_rigid_body

__all__ = [  # Convergence, ConvergenceCriteria, GAUSSIAN_CRITERIA, remove_rigid_body: from hip.convergence
    "GAUSSIAN_CRITERIA", "OPTIMIZATION_ERRORS", "Convergence", "ConvergenceCriteria", "CountedHessian",
    "HessianFunction", "OptimizationResult", "OptimizerSpec", "WorkEnergy", "calculator_hessian",
    "count_negative_modes", "make_optimizer", "optimize", "remove_rigid_body",
]

HessianFunction = Callable[[Atoms], np.ndarray]

#: The HIP authors' relaxation trust radius (their gad-ff ``second_order_relaxation_pysiyphus.py``:
#: pysisyphus ``RFOptimizer(trust_radius=0.3)`` in Bohr, redundant internal coordinates), Å.
AUTHORS_TRUST_RADIUS = 0.3 * BOHR_TO_ANGSTROM


def count_negative_modes(hessian: np.ndarray, atoms: Atoms, threshold_cm1: float | None = None) -> int:
    """Number of imaginary modes of the mass-weighted, Eckart-projected Hessian (paper §2.3, Table 3).

    0 is a minimum, 1 a first-order saddle (transition state). The default threshold is ``eval.py``'s
    (:data:`hip.extrema.TABLE3_THRESHOLD_CM1`, eigenvalues below −1e-6 eV/(Å²·amu)), so a molecule is
    classified exactly as in the Table 3 and Table 9 evaluation; TS searches pass
    :data:`hip.extrema.TS_THRESHOLD_CM1` (10 cm⁻¹, ReactBench's TS rule).

    Args:
        hessian: (3N, 3N) Cartesian Hessian, eV/Å².
        atoms: the geometry (positions Å; standard masses of its elements).
        threshold_cm1: modes below −threshold_cm1 count (:func:`hip.extrema.count_imaginary`); None: Table 3's.

    Raises:
        ValueError: the Hessian's shape does not fit the atoms.
    """
    from hip.extrema import TABLE3_THRESHOLD_CM1, count_imaginary
    from hip.vibrations import vibrational_analysis

    modes = vibrational_analysis(hessian, atoms.positions, atoms.numbers)
    return count_imaginary(modes.frequencies, TABLE3_THRESHOLD_CM1 if threshold_cm1 is None else threshold_cm1)


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimiser of the paper's comparison.

    Attributes:
        key: short name for command lines and result files, e.g. ``"rfo_hip"``.
        label: name in tables and figures, e.g. ``"RFO (HIP)"``.
        algorithm: ``"sella"`` (RS-RFO, or RS-P-RFO for ``order=1``), ``"bfgs"`` or ``"fire"`` (ASE's).
        hessian: the Hessian source: ``"hip"``, ``"autodiff"``, ``"finite_difference"`` (a model
            calculator's ``hessian_method``), ``"identity"`` (1 Hartree/Bohr² · I), or None for the
            first-order ASE optimisers.
        every_step: a fresh Hessian at every step; otherwise one at the start, then Sella's TS-BFGS
            updates (which are BFGS whenever the Hessian and the step pairs are positive definite).
    """

    key: str
    label: str
    algorithm: str
    hessian: str | None = None
    every_step: bool = False

    ALGORITHMS: ClassVar[tuple[str, ...]] = ("sella", "bfgs", "fire")
    HESSIANS: ClassVar[tuple[str | None, ...]] = ("hip", "autodiff", "finite_difference", "identity", None)

    def __post_init__(self):
        if self.algorithm not in self.ALGORITHMS:
            raise ValueError(f"optimizer {self.key}: algorithm must be one of {self.ALGORITHMS}, "
                             f"got {self.algorithm!r}")
        if self.hessian not in self.HESSIANS:
            raise ValueError(f"optimizer {self.key}: hessian must be one of {self.HESSIANS}, got {self.hessian!r}")
        if (self.algorithm == "sella") != (self.hessian is not None):
            raise ValueError(f"optimizer {self.key}: Sella needs a Hessian source, ASE's optimisers take none "
                             f"(algorithm {self.algorithm!r}, hessian {self.hessian!r})")

    @property
    def model_hessian(self) -> str | None:
        """The calculator ``hessian_method`` this optimiser needs, or None."""
        return self.hessian if self.hessian in ("hip", "autodiff", "finite_difference") else None


class CountedHessian:
    """A Hessian function for optimisers: symmetrised, checked, its calls counted and timed.

    The result is (H + Hᵀ)/2: Sella's eigensolvers need a symmetric matrix, and the autodiff and
    finite-difference Hessians of a direct-force model are not symmetric (HIP's is, and is unchanged).

    Args:
        function: ``atoms → (3N, 3N)`` eV/Å².
    """

    def __init__(self, function: HessianFunction):
        self.function = function
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, atoms: Atoms) -> np.ndarray:
        """The symmetrised Hessian of ``atoms``, (3N, 3N) float64 eV/Å².

        Raises:
            FloatingPointError: it has non-finite entries.
        """
        start = time.perf_counter()
        hessian = np.asarray(self.function(atoms), dtype=np.float64)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        if not np.isfinite(hessian).all():
            raise FloatingPointError(f"non-finite Hessian for {atoms.get_chemical_formula()}")
        return 0.5 * (hessian + hessian.T)


class WorkEnergy(Calculator):
    """An ASE calculator reporting the forces of ``calculator`` and, as energy, the work along the path.

    HIP's forces come from a direct head, not from −∂E/∂x, and a small model's energy and forces
    can disagree by far more than the convergence thresholds: for the shipped ``ckpt/hip_small.ckpt``
    the energy's slope along a random unit displacement differs from −F·d by 5 eV/Å (median over 20
    directions at 5 G2 geometries), 200× Gaussian's 0.023 eV/Å. Trust-region optimisers (RS-RFO, RS-P-RFO)
    grow or shrink their step from the ratio of the actual to the predicted energy change; with such
    an energy that ratio is noise near convergence, and the trust radius collapses. This calculator
    replaces the energy by the force work along the sequence of evaluated geometries,
    E_{k+1} = E_k − ½ (F_k + F_{k+1}) · (x_{k+1} − x_k), starting from the model's energy at the first
    geometry. For conservative forces it equals the true energy change to third order in the step; on
    a quadratic surface with the exact Hessian the optimiser's ratio is exactly 1, so the trust radius
    then measures how well the Hessian predicts the force change, which is what the paper compares.

    Args:
        calculator: the wrapped calculator (forces eV/Å; ``get_hessian`` is passed through).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "forces"]

    def __init__(self, calculator: Calculator):
        super().__init__()
        self.calculator = calculator
        self.path_point: tuple[np.ndarray, np.ndarray, float] | None = None  # positions, forces, energy

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        """Fill ``self.results``: the wrapped ``forces`` (N, 3) eV/Å and the path ``energy`` eV."""
        super().calculate(atoms, properties, system_changes)
        forces = np.asarray(self.calculator.get_forces(self.atoms), dtype=np.float64)
        positions = self.atoms.positions.copy()
        if self.path_point is None:
            energy = float(self.calculator.get_potential_energy(self.atoms))
        else:
            x, f, e = self.path_point
            energy = e - 0.5 * float(((f + forces) * (positions - x)).sum())
        self.path_point = (positions, forces, energy)
        self.results = {"energy": energy, "forces": forces}

    def get_hessian(self, atoms: Atoms | None = None) -> np.ndarray:
        """The wrapped calculator's Hessian of ``atoms``, (3N, 3N) eV/Å²."""
        return self.calculator.get_hessian(atoms if atoms is not None else self.atoms)


def calculator_hessian(atoms: Atoms) -> np.ndarray:
    """``atoms.calc.get_hessian(atoms)``: the Hessian source of a calculator that has one, eV/Å²."""
    return atoms.calc.get_hessian(atoms)


def make_optimizer(atoms: Atoms, spec: OptimizerSpec, order: int = 0,
                   hessian_function: HessianFunction | None = None, internal: bool = False,
                   trust_radius: float | None = None):
    """The ASE optimiser that ``spec`` describes, attached to ``atoms`` (which carry the calculator).

    Sella settings: RS-RFO (``method="rfo"``) for ``order=0`` and Sella's RS-P-RFO for ``order=1``;
    with a model Hessian ``eig=True`` and ``hessian_function``, recomputed before every step when
    ``spec.every_step`` (``diag_every_n=-1``: Sella recomputes once ``steps since`` ≥ ``diag_every_n``,
    which is then always true, including the first step) and never otherwise (updates only);
    with ``"identity"`` the initial Hessian is 1 Hartree/Bohr² · I in Cartesian coordinates.

    Args:
        atoms: the molecule to optimise, with its calculator (positions Å).
        spec: which optimiser.
        order: 0 for a minimum, 1 for a first-order saddle (Sella only).
        hessian_function: ``atoms → (3N, 3N)`` eV/Å² (needed for a model-Hessian spec).
        internal: Sella in its internal coordinates instead of Cartesians (not with ``"identity"``).
        trust_radius: Sella's initial trust radius ``delta0``, Å (None: Sella's 0.1 Å; the authors'
            pysisyphus runs use 0.3 Bohr = :data:`AUTHORS_TRUST_RADIUS`).

    Raises:
        ValueError: a model-Hessian spec without ``hessian_function``; ``order`` other than 0 for ASE's
            optimisers or the identity start; ``internal`` with the identity start.
    """
    if spec.algorithm in ("bfgs", "fire"):
        if order != 0:
            raise ValueError(f"{spec.label} finds minima only (order=0), got order={order}")
        from ase.optimize import BFGS, FIRE

        return (BFGS if spec.algorithm == "bfgs" else FIRE)(atoms, logfile=None)
    from sella import Sella

    tolerate_sella_round_off()
    kwargs: dict[str, Any] = dict(order=order, internal=internal, logfile=None)
    if trust_radius is not None:
        kwargs["delta0"] = trust_radius
    if order == 0:
        kwargs["method"] = "rfo"
    if spec.hessian == "identity":
        if order != 0 or internal:
            raise ValueError(f"{spec.label}: the identity start is for minimisation in Cartesian coordinates")
        kwargs.update(eig=False, H0=HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2 * np.eye(3 * len(atoms)))
    else:
        if hessian_function is None:
            raise ValueError(f"{spec.label} needs a hessian_function (its {spec.hessian} Hessian)")
        kwargs.update(eig=True, hessian_function=hessian_function)
        if spec.every_step:
            kwargs["diag_every_n"] = -1
        else:
            kwargs["nsteps_per_diag"] = 1 << 30  # saddle search: no re-diagonalisation, updates only
    return Sella(atoms, **kwargs)


@dataclass
class OptimizationResult:
    """What one optimisation did.

    Attributes:
        converged: the criteria held within the step budget.
        steps: optimiser steps taken (≤ the budget).
        wall_time: seconds, set-up and all force and Hessian evaluations included.
        hessian_calls: model/DFT Hessians computed.
        hessian_time: seconds spent in them.
        energy: final energy, eV.
        max_force, rms_force: final values, Hartree/Bohr (rigid-body components removed).
        max_step, rms_step: of the last step, Bohr.
        timed_out: stopped by the wall-time limit before converging or using the step budget.
        error: ``"Type: message"`` if the run stopped on an error (then not converged), else ``""``.
    """

    converged: bool
    steps: int
    wall_time: float
    timed_out: bool = False
    hessian_calls: int = 0
    hessian_time: float = 0.0
    energy: float = math.nan
    max_force: float = math.nan
    rms_force: float = math.nan
    max_step: float = math.nan
    rms_step: float = math.nan
    error: str = ""

    def as_row(self, prefix: str = "") -> dict[str, Any]:
        """The fields as a flat dict, keys prefixed with ``prefix``."""
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


#: Errors an optimisation can meet on a bad geometry or a bad model (atoms collapsing, a singular
#: step problem, NaNs): they end the run, are recorded in ``OptimizationResult.error`` and reported.
OPTIMIZATION_ERRORS = (ValueError, RuntimeError, FloatingPointError, np.linalg.LinAlgError)
#: Sella 2.6's eigensolver refuses a matrix asymmetric by more than 1e-10 (Frobenius, relative), and its
#: own Hessian algebra produces that by round-off: 3e-10 in two DFT IRC end relaxations of HC≡CH → H₂C=C:
#: (``||A - A.T||_F = 9.6e-08, ||A||_F = 293``), the same again after restarting Sella with a fresh
#: Hessian. Matrices asymmetric by less than this are symmetrised before Sella's check
#: (:func:`tolerate_sella_round_off`); larger asymmetry still raises Sella's error.
SELLA_SYMMETRY_RTOL = 1e-6


def tolerate_sella_round_off() -> None:
    """Wrap Sella's symmetric eigensolver (``sella.optimize.stepper._eigh_symmetric``, called by name at every
    step) so that it symmetrises a matrix within :data:`SELLA_SYMMETRY_RTOL` of symmetric first. Idempotent;
    :func:`make_optimizer` calls it."""
    import sella.optimize.stepper as stepper

    original = stepper._eigh_symmetric
    if getattr(original, "tolerates_round_off", False):
        return

    @functools.wraps(original)  # keeps Sella's function as __wrapped__
    def eigh_symmetric(matrix: np.ndarray, *args, **kwargs):
        asymmetry = np.linalg.norm(matrix - matrix.T)
        if np.isfinite(asymmetry) and asymmetry <= SELLA_SYMMETRY_RTOL * max(np.linalg.norm(matrix), 1.0):
            matrix = 0.5 * (matrix + matrix.T)
        return original(matrix, *args, **kwargs)

    eigh_symmetric.tolerates_round_off = True
    stepper._eigh_symmetric = eigh_symmetric


def optimize(atoms: Atoms, spec: OptimizerSpec, criteria: ConvergenceCriteria = GAUSSIAN_CRITERIA["default"],
             max_steps: int = 150, order: int = 0, hessian_function: HessianFunction | None = None,
             internal: bool = False, time_limit: float | None = None,
             trust_radius: float | None = None) -> OptimizationResult:
    """Optimise ``atoms`` in place with ``spec`` until ``criteria`` hold or ``max_steps`` steps were taken.

    After every step the forces at the new geometry and the step just taken are measured
    (:meth:`ConvergenceCriteria.measure`); the run converges at the first step where all four hold.
    Paper A.6.1 (relaxations, 150 steps, "Gaussian default"), A.6.2 (TS search, ``order=1``, 50 steps).

    Args:
        atoms: the molecule, with its calculator; positions Å, changed in place.
        spec: the optimiser (:data:`hip.benchmarks.RELAXATION_METHODS`, :data:`hip.benchmarks.TS_SEARCH_METHODS`
            or your own).
        criteria: convergence thresholds.
        max_steps: step budget.
        order: 0 minimum, 1 first-order saddle.
        hessian_function: ``atoms → (3N, 3N)`` eV/Å², for Sella with a model Hessian (counted and timed).
        internal: Sella in internal coordinates.
        time_limit: stop (not converged, ``timed_out``) once a step ends after this many seconds; None:
            no limit. For benchmarks where per-step autodiff or finite-difference Hessians would take
            hours; the paper omits their wall times for the same reason (Fig. 3).
        trust_radius: Sella's initial trust radius, Å (:func:`make_optimizer`).

    Returns:
        :class:`OptimizationResult`. An error of :data:`OPTIMIZATION_ERRORS` during the run ends it
        and is returned in ``error`` (not raised), so one bad geometry does not stop a benchmark.

    Raises:
        ValueError: an inconsistent spec/order/Hessian combination (:func:`make_optimizer`).
    """
    counted = CountedHessian(hessian_function) if hessian_function is not None else None
    start = time.perf_counter()
    optimizer = make_optimizer(atoms, spec, order, counted, internal, trust_radius)
    result = OptimizationResult(False, 0, 0.0)
    previous = atoms.positions.copy()
    try:
        for step in range(1, max_steps + 1):
            optimizer.step()
            forces = atoms.get_forces()
            if not np.isfinite(forces).all():
                raise FloatingPointError(f"non-finite forces after step {step}")
            check = criteria.measure(forces, atoms.positions - previous, atoms.positions)
            previous = atoms.positions.copy()
            result.steps = step
            result.max_force, result.rms_force, result.max_step, result.rms_step = check[:4]
            if check.converged:
                result.converged = True
                break
            if time_limit is not None and time.perf_counter() - start > time_limit and step < max_steps:
                result.timed_out = True
                break
        result.energy = float(atoms.get_potential_energy())
    except OPTIMIZATION_ERRORS as e:
        result.converged = False
        result.error = f"{type(e).__name__}: {e}"
    result.wall_time = time.perf_counter() - start
    if counted is not None:
        result.hessian_calls, result.hessian_time = counted.calls, counted.seconds
    return result
