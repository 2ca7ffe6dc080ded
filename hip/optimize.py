"""Geometry optimisation, transition-state search and IRC driven by Hessians (paper §2.3, §4, A.6).

The paper's downstream experiments compare Hessians by what they do for restricted-step rational
function optimisation: RS-RFO for minima (Fig. 3), RS-P-RFO for first-order saddles (Fig. 4), and
the harmonic analysis behind the zero-point energy (Table 2). The optimisers here are Sella's
(ASE-native: ``order=0`` RS-RFO, ``order=1`` RS-P-RFO, and its IRC); this module only wires a Hessian
source into them, applies the paper's convergence criteria and records what happened. Any ASE
calculator works; a Hessian source is a function ``atoms → (3N, 3N) eV/Å²`` array, normally
``atoms.calc.get_hessian`` of a :class:`hip.calculator.HIPCalculator` whose ``hessian_method`` is
``"hip"``, ``"autodiff"`` or ``"finite_difference"``.

Pieces, in the order a benchmark uses them:

* molecules: :func:`load_molecules` (a HORM-format shard and raw indices, or any ASE-readable file),
  :func:`count_negative_modes` (frequency analysis, the threshold of ``eval.py``'s Table 3),
  :func:`perturb` (Gaussian noise of a given RMS);
* convergence: :class:`ConvergenceCriteria` and :data:`GAUSSIAN_CRITERIA` (Table 13, Ha/Bohr and Bohr);
* optimisers: :class:`OptimizerSpec`, :data:`RELAXATION_METHODS` (Fig. 3), :data:`TS_SEARCH_METHODS`
  (Fig. 4), :func:`optimize` → :class:`OptimizationResult`;
* transition-state checks: :func:`irc_verify` (Sella's IRC both ways, then the end points relaxed and
  classified) and :func:`dft_verify` (PySCF at HORM's level of theory, :mod:`hip.data.labelling`);
  :class:`DFTCalculator` makes the same DFT an ASE calculator (for DFT relaxations);
* bookkeeping: :class:`ResultsLog` (append-only JSON lines, resumable), :func:`quartiles`, and the
  command-line, report and figure helpers shared by the three benchmark scripts.

Units: positions Å, energies eV, forces eV/Å, Hessians eV/Å² everywhere except the convergence
criteria, which are stated, as in Gaussian and the paper, in Hartree/Bohr (forces) and Bohr (steps).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from hip.constants import BOHR_TO_ANGSTROM, HARTREE_TO_EV

#: 1 Hartree/Bohr in eV/Å.
HA_PER_BOHR_IN_EV_PER_A = HARTREE_TO_EV / BOHR_TO_ANGSTROM
#: 1 Hartree/Bohr² in eV/Å² (the unit of the "identity" initial Hessian, as in atomic-unit optimisers).
HA_PER_BOHR2_IN_EV_PER_A2 = HARTREE_TO_EV / BOHR_TO_ANGSTROM**2

HessianFunction = Callable[[Atoms], np.ndarray]


# ---------------------------------------------------------------------------------------------------
# Molecules
# ---------------------------------------------------------------------------------------------------
@dataclass
class Molecule:
    """One input geometry and, when the source has them, its DFT labels.

    Attributes:
        name: where it came from, e.g. ``"sample_100.lmdb:83"`` (shard and raw index) or ``"x.xyz:2"``.
        atoms: the geometry (positions Å), no calculator attached.
        dft_hessian: (3N, 3N) float64 DFT Hessian, eV/Å², or None.
        dft_forces: (N, 3) float64 DFT forces, eV/Å, or None.
    """

    name: str
    atoms: Atoms
    dft_hessian: np.ndarray | None = None
    dft_forces: np.ndarray | None = None


def _is_horm(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".lmdb"


def load_molecules(path: str | Path, indices: Sequence[int] | None = None) -> list[Molecule]:
    """Molecules from a HORM-format LMDB shard (with their DFT Hessians) or any ASE-readable file.

    Args:
        path: a ``.lmdb`` shard or a directory of them (read by :class:`hip.data.HormDataset`, raw
            indices, molecules with F left out as in HIP), or a file ``ase.io.read`` understands
            (xyz, extxyz, traj, ...; every frame is a molecule, without DFT labels).
        indices: raw shard indices or frame numbers to take, in this order (default: all).

    Returns:
        The molecules, named ``"<file name>:<index>"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a frame index outside the file, or ASE cannot read a frame (naming file and frame);
            a HORM entry is invalid (:class:`hip.data.horm.HormDataError`, naming shard, key and field).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"molecule source {path} does not exist")
    if _is_horm(path):
        from hip.data import HormDataset

        dataset = HormDataset(path, indices=indices)
        if dataset.num_excluded:
            warnings.warn(f"{path}: {dataset.num_excluded} selected molecules contain F and are left out "
                          "(HIP's elements are H, C, N, O)", stacklevel=2)
        molecules = []
        for i in range(len(dataset)):
            entry = dataset.read(i)
            shard, _, raw = dataset.locate(i)
            n = int(entry["z"].numel())
            molecules.append(Molecule(
                f"{shard.name}:{raw}",
                Atoms(numbers=entry["z"].numpy(), positions=entry["pos"].double().numpy()),
                entry["hessian"].double().numpy().reshape(3 * n, 3 * n),
                entry["forces"].double().numpy(),
            ))
        return molecules
    import ase.io

    frames: list[Atoms] = []
    try:
        for atoms in ase.io.iread(path, index=":"):
            frames.append(atoms)
    except Exception as e:  # ASE raises many types for unreadable files
        raise ValueError(f"{path} frame {len(frames)}: ASE cannot read it ({type(e).__name__}: {e})") from e
    chosen = range(len(frames)) if indices is None else list(indices)
    bad = [i for i in chosen if not 0 <= i < len(frames)]
    if bad:
        raise ValueError(f"{path}: frame indices {bad} outside the file's {len(frames)} frames")
    return [Molecule(f"{path.name}:{i}", Atoms(numbers=frames[i].numbers, positions=frames[i].positions))
            for i in chosen]


def count_negative_modes(hessian: np.ndarray, atoms: Atoms) -> int:
    """Number of negative eigenvalues of the mass-weighted, Eckart-projected Hessian (paper §2.3, Table 3).

    0 is a minimum, 1 a first-order saddle (transition state). The threshold is ``eval.py``'s
    (:data:`hip.metrics.NEGATIVE_EIGENVALUE_THRESHOLD`, −1e-6 eV/(Å²·amu)), so a molecule is classified
    here exactly as in the Table 3 and Table 9 evaluation.

    Args:
        hessian: (3N, 3N) Cartesian Hessian, eV/Å².
        atoms: the geometry (positions Å; standard masses of its elements).

    Raises:
        ValueError: the Hessian's shape does not fit the atoms.
    """
    from hip.vibrations import vibrational_analysis

    return _count_negative(vibrational_analysis(hessian, atoms.positions, atoms.numbers))


def _count_negative(modes) -> int:
    from hip.metrics import NEGATIVE_EIGENVALUE_THRESHOLD

    return int((modes.eigenvalues < NEGATIVE_EIGENVALUE_THRESHOLD).sum())


def perturb(atoms: Atoms, rms: float, rng: np.random.Generator, min_distance: float = 0.7) -> Atoms:
    """A copy of ``atoms`` with Gaussian noise of per-atom RMS displacement ``rms`` Å (paper A.6.1: 0.5 Å).

    Every Cartesian coordinate gets i.i.d. noise of σ = rms/√3, so the expected mean squared atomic
    displacement is rms². Draws are repeated (same generator, so still seeded) until no two atoms are
    closer than ``min_distance`` Å (:func:`hip.data.labelling.displace`).

    Raises:
        ValueError: ``rms`` < 0, or no draw in 100 keeps the atoms ``min_distance`` apart.
    """
    from hip.data.labelling import displace

    out = atoms.copy()
    out.calc = None
    out.positions = displace(atoms.positions, rms / math.sqrt(3.0), rng, min_dist=min_distance)
    return out


# ---------------------------------------------------------------------------------------------------
# Convergence (paper Table 13)
# ---------------------------------------------------------------------------------------------------
class Convergence(NamedTuple):
    """The four Gaussian quantities of one step and whether all are below their thresholds.

    Attributes:
        max_force: largest |force component|, Hartree/Bohr.
        rms_force: RMS of the force components, Hartree/Bohr.
        max_step: largest |displacement component| of the step just taken, Bohr.
        rms_step: RMS of its components, Bohr.
        converged: all four below the criteria.
    """

    max_force: float
    rms_force: float
    max_step: float
    rms_step: float
    converged: bool


def remove_rigid_body(vectors: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``vectors`` [N, 3] minus their components along rigid translations and rotations of ``positions``.

    The rigid-body subspace is that of the Eckart vectors with unit masses
    (:func:`hip.vibrations.eckart_vectors`), i.e. the Cartesian directions that leave all interatomic
    distances unchanged to first order. An energy invariant under rigid motions has no force along
    them, but a direct force head (HIP's) can leave a small net force or torque there.

    Returns:
        [N, 3] float64, same units as ``vectors``.
    """
    from hip.vibrations import eckart_vectors

    u = eckart_vectors(positions, np.ones(len(positions))).numpy()  # [d, 3N] orthonormal rows
    flat = np.asarray(vectors, dtype=np.float64).reshape(-1)
    return (flat - u.T @ (u @ flat)).reshape(-1, 3)


@dataclass(frozen=True)
class ConvergenceCriteria:
    """Gaussian-style convergence thresholds (paper A.6.4, Table 13); all four must hold.

    Forces and steps are measured with their rigid-body components removed
    (:func:`remove_rigid_body`), as in the redundant internal coordinates the paper's optimiser works in;
    otherwise a model's tiny net force would block convergence in Cartesian coordinates.

    Attributes:
        name: e.g. ``"default"``.
        max_force: Hartree/Bohr.
        rms_force: Hartree/Bohr.
        max_step: Bohr.
        rms_step: Bohr.
    """

    name: str
    max_force: float
    rms_force: float
    max_step: float
    rms_step: float

    def measure(self, forces: np.ndarray, step: np.ndarray, positions: np.ndarray) -> Convergence:
        """The four quantities and the verdict for ``forces`` (N, 3) eV/Å after ``step`` (N, 3) Å.

        ``positions`` (N, 3) Å define the rigid-body directions that are removed.
        """
        f = remove_rigid_body(forces, positions) / HA_PER_BOHR_IN_EV_PER_A
        s = remove_rigid_body(step, positions) / BOHR_TO_ANGSTROM
        values = (float(np.abs(f).max()), float(np.sqrt((f**2).mean())),
                  float(np.abs(s).max()), float(np.sqrt((s**2).mean())))
        limits = (self.max_force, self.rms_force, self.max_step, self.rms_step)
        return Convergence(*values, all(v < lim for v, lim in zip(values, limits, strict=True)))

    def fmax_ev_per_a(self) -> float:
        """``max_force`` in eV/Å (for optimisers that take an ASE ``fmax``)."""
        return self.max_force * HA_PER_BOHR_IN_EV_PER_A


#: Gaussian's criteria (paper Table 13): "default" for relaxations and TS search, "tight" for ZPE.
GAUSSIAN_CRITERIA: dict[str, ConvergenceCriteria] = {
    "loose": ConvergenceCriteria("loose", 2.5e-3, 1.7e-3, 1.0e-2, 6.7e-3),
    "default": ConvergenceCriteria("default", 4.5e-4, 3.0e-4, 1.8e-3, 1.2e-3),
    "tight": ConvergenceCriteria("tight", 1.5e-5, 1.0e-5, 6.0e-5, 4.0e-5),
    "verytight": ConvergenceCriteria("verytight", 2.0e-6, 1.0e-6, 6.0e-6, 4.0e-6),
}


# ---------------------------------------------------------------------------------------------------
# Optimisers
# ---------------------------------------------------------------------------------------------------
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


#: Short labels of the model Hessian methods (``HIPCalculator.hessian_method``) in tables and figures.
HESSIAN_LABELS = {"hip": "HIP", "autodiff": "AD", "finite_difference": "FD"}
_KEY = {"hip": "hip", "autodiff": "ad", "finite_difference": "fd"}

#: Paper Fig. 3 / A.6.1: RS-RFO with a fresh Hessian every step, RS-RFO with updates from an initial
#: Hessian (HIP, AD, FD or identity), and ASE's first-order BFGS and FIRE.
RELAXATION_METHODS: tuple[OptimizerSpec, ...] = (
    *(OptimizerSpec(f"rfo_{_KEY[h]}", f"RFO ({HESSIAN_LABELS[h]})", "sella", h, True) for h in HESSIAN_LABELS),
    *(OptimizerSpec(f"rfo_bfgs_{_KEY[h]}", f"RFO-BFGS ({HESSIAN_LABELS[h]} init)", "sella", h) for h in HESSIAN_LABELS),
    OptimizerSpec("rfo_bfgs_identity", "RFO-BFGS (identity init)", "sella", "identity"),
    OptimizerSpec("ase_bfgs", "BFGS (ASE)", "bfgs"),
    OptimizerSpec("ase_fire", "FIRE (ASE)", "fire"),
)

#: Paper Fig. 4 / A.6.2: RS-P-RFO with a fresh Hessian every step, or an initial one and updates.
TS_SEARCH_METHODS: tuple[OptimizerSpec, ...] = (
    *(OptimizerSpec(f"prfo_{_KEY[h]}", f"P-RFO ({HESSIAN_LABELS[h]})", "sella", h, True) for h in HESSIAN_LABELS),
    *(OptimizerSpec(f"prfo_bfgs_{_KEY[h]}", f"P-RFO-BFGS ({HESSIAN_LABELS[h]} init)", "sella", h)
      for h in HESSIAN_LABELS),
)


def select_methods(available: Sequence[OptimizerSpec], keys: Iterable[str] | None) -> list[OptimizerSpec]:
    """The specs named by ``keys`` (all of ``available`` if None), in the order of ``keys``.

    Raises:
        ValueError: an unknown key (the message lists the known ones).
    """
    by_key = {spec.key: spec for spec in available}
    if keys is None:
        return list(available)
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {list(by_key)}")
    return [by_key[k] for k in keys]


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
                   hessian_function: HessianFunction | None = None, internal: bool = False):
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

    kwargs: dict[str, Any] = dict(order=order, internal=internal, logfile=None)
    if order == 0:
        kwargs["method"] = "rfo"
    if spec.hessian == "identity":
        if order != 0 or internal:
            raise ValueError(f"{spec.label}: the identity start is for minimisation in Cartesian coordinates")
        kwargs.update(eig=False, H0=HA_PER_BOHR2_IN_EV_PER_A2 * np.eye(3 * len(atoms)))
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


def optimize(atoms: Atoms, spec: OptimizerSpec, criteria: ConvergenceCriteria = GAUSSIAN_CRITERIA["default"],
             max_steps: int = 150, order: int = 0, hessian_function: HessianFunction | None = None,
             internal: bool = False, time_limit: float | None = None) -> OptimizationResult:
    """Optimise ``atoms`` in place with ``spec`` until ``criteria`` hold or ``max_steps`` steps were taken.

    After every step the forces at the new geometry and the step just taken are measured
    (:meth:`ConvergenceCriteria.measure`); the run converges at the first step where all four hold.
    Paper A.6.1 (relaxations, 150 steps, "Gaussian default"), A.6.2 (TS search, ``order=1``, 50 steps).

    Args:
        atoms: the molecule, with its calculator; positions Å, changed in place.
        spec: the optimiser (:data:`RELAXATION_METHODS`, :data:`TS_SEARCH_METHODS` or your own).
        criteria: convergence thresholds.
        max_steps: step budget.
        order: 0 minimum, 1 first-order saddle.
        hessian_function: ``atoms → (3N, 3N)`` eV/Å², for Sella with a model Hessian (counted and timed).
        internal: Sella in internal coordinates.
        time_limit: stop (not converged, ``timed_out``) once a step ends after this many seconds; None:
            no limit. For benchmarks where per-step autodiff or finite-difference Hessians would take
            hours; the paper omits their wall times for the same reason (Fig. 3).

    Returns:
        :class:`OptimizationResult`. An error of :data:`OPTIMIZATION_ERRORS` during the run ends it
        and is returned in ``error`` (not raised), so one bad geometry does not stop a benchmark.

    Raises:
        ValueError: an inconsistent spec/order/Hessian combination (:func:`make_optimizer`).
    """
    counted = CountedHessian(hessian_function) if hessian_function is not None else None
    start = time.perf_counter()
    optimizer = make_optimizer(atoms, spec, order, counted, internal)
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


# ---------------------------------------------------------------------------------------------------
# Transition-state checks (paper A.6.2)
# ---------------------------------------------------------------------------------------------------
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
    and takes up to ``irc_steps`` steps of ``irc_dx`` (Å·√amu), stopping early at a minimum (forces
    below ``criteria.max_force``). Each end point is then relaxed with RS-RFO and TS-BFGS updates from
    an initial Hessian of the same source (``criteria``, ``relax_steps``), and its negative modes are
    counted (:func:`count_negative_modes`). ReactBench's check that the ends are the reaction's known
    reactant and product needs those; without them "verified" means two distinct minima (paper A.6.2,
    stage 3).

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
                for _ in irc.irun(fmax=criteria.fmax_ev_per_a(), steps=irc_steps, direction=direction):
                    if time.perf_counter() > deadline:
                        break
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


@dataclass
class DFTCheck:
    """DFT verification of a found transition state (paper A.6.2, Fig. 4).

    Attributes:
        negative_modes: negative eigenvalues of the DFT Hessian after mass weighting and Eckart projection
            (None if the DFT calculation failed).
        force_rms: RMS of the DFT force components, Hartree/Bohr (None if it failed).
        ts: exactly one negative mode ("DFT-verified TS success").
        converged_ts: ``ts`` and ``force_rms`` < 2e-3 Hartree/Bohr ("DFT-verified converged and TS success").
        wall_time: seconds of the DFT calculation.
        lowest_frequencies: the lowest DFT harmonic wavenumbers, cm⁻¹, negative for imaginary modes
            (up to 4, ascending), so that a check can be judged beyond the count.
        error: why the DFT calculation failed (SCF not converged, odd electron count, ...), else "".
    """

    negative_modes: int | None
    force_rms: float | None
    ts: bool
    converged_ts: bool
    wall_time: float
    lowest_frequencies: list[float] = field(default_factory=list)
    error: str = ""

    #: The paper's DFT force RMS threshold, Hartree/Bohr.
    FORCE_RMS_THRESHOLD: ClassVar[float] = 2e-3


def dft_verify(atoms: Atoms, **label_kwargs) -> DFTCheck:
    """Recompute ``atoms`` with DFT (:func:`hip.data.labelling.label_molecule`: PySCF ωB97X/6-31G(d),
    HORM's level, unless ``label_kwargs`` say otherwise, e.g. ``basis="sto-3g"`` for a quick test) and
    apply the paper's two checks: one negative Hessian mode, force RMS below 2e-3 Hartree/Bohr.

    Minutes per molecule of 10–20 atoms on 2 CPU cores (the analytic Hessian dominates).

    Returns:
        :class:`DFTCheck`. A failed calculation (an element without reference energy, an odd electron
        count, an SCF that does not converge) is returned as a failed check with its ``error``, not
        raised, so that a benchmark records it and moves on.
    """
    from hip.data.labelling import label_molecule
    from hip.vibrations import vibrational_analysis

    start = time.perf_counter()
    try:
        labels = label_molecule(atoms.numbers, atoms.positions, hessian=True, **label_kwargs)
    except (ValueError, RuntimeError) as e:
        return DFTCheck(None, None, False, False, time.perf_counter() - start, error=f"{type(e).__name__}: {e}")
    modes = vibrational_analysis(labels.hessian, atoms.positions, atoms.numbers)
    n_negative = _count_negative(modes)
    force_rms = float(np.sqrt((labels.forces**2).mean())) / HA_PER_BOHR_IN_EV_PER_A
    return DFTCheck(n_negative, force_rms, n_negative == 1,
                    n_negative == 1 and force_rms < DFTCheck.FORCE_RMS_THRESHOLD, labels.timings["total"],
                    [round(float(f), 1) for f in modes.frequencies[:4]])


class DFTCalculator(Calculator):
    """ASE calculator: energy (eV) and forces (eV/Å) from PySCF at HORM's level of theory.

    Wraps :func:`hip.data.labelling.label_molecule` (``hessian=False``), so a DFT relaxation (paper
    A.6.3: the ZPE reference geometries) uses exactly the labelling settings; ``get_hessian`` adds
    PySCF's analytic Hessian (eV/Å²). One SCF per new geometry.

    Args:
        **label_kwargs: passed to ``label_molecule`` (``basis``, ``xc``, ``conv_tol``, ...).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "forces", "hessian"]

    def __init__(self, **label_kwargs):
        super().__init__()
        self.label_kwargs = label_kwargs

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        """Fill ``self.results``: ``energy`` eV, ``forces`` (N, 3) eV/Å, and ``hessian`` (3N, 3N) eV/Å² if asked.

        Raises:
            ValueError, RuntimeError: see :func:`hip.data.labelling.label_molecule`.
        """
        from hip.data.labelling import label_molecule

        super().calculate(atoms, properties, system_changes)
        labels = label_molecule(self.atoms.numbers, self.atoms.positions, hessian="hessian" in properties,
                                **self.label_kwargs)
        self.results = {"energy": labels.energy, "forces": labels.forces}
        if labels.hessian is not None:
            self.results["hessian"] = labels.hessian

    def get_hessian(self, atoms: Atoms | None = None) -> np.ndarray:
        """PySCF's analytic Hessian of ``atoms``, (3N, 3N) eV/Å²."""
        return self.get_property("hessian", atoms)


# ---------------------------------------------------------------------------------------------------
# Bookkeeping
# ---------------------------------------------------------------------------------------------------
class ResultsLog:
    """Finished runs of a benchmark as JSON lines, written one at a time so that a rerun resumes.

    ``<directory>/settings.json`` holds the settings that change results (checkpoint, noise, budget,
    ...); reopening the directory with different settings is an error rather than a silent mix.
    ``<directory>/results.jsonl`` holds one JSON object per finished run; a run is identified by the
    values of ``key_fields``.

    Args:
        directory: created if missing.
        settings: JSON-serialisable settings of this run.
        key_fields: the fields that identify a run, e.g. ``("molecule", "method")``.

    Raises:
        ValueError: ``settings`` differ from the stored ones (the message names the file and the fields),
            or a line of ``results.jsonl`` other than the last is not valid JSON (naming file and line).
    """

    def __init__(self, directory: str | Path, settings: Mapping[str, Any], key_fields: Sequence[str]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key_fields = tuple(key_fields)
        self.path = self.directory / "results.jsonl"
        settings_path = self.directory / "settings.json"
        settings = json.loads(json.dumps(dict(settings)))  # normalise (tuples → lists)
        if settings_path.exists():
            stored = json.loads(settings_path.read_text())
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            if changed:
                details = ", ".join(f"{k}: stored {stored.get(k)!r}, now {settings.get(k)!r}" for k in changed)
                raise ValueError(f"{settings_path}: this output directory holds results of other settings "
                                 f"({details}); use another output directory or delete it")
        else:
            settings_path.write_text(json.dumps(settings, indent=2) + "\n")
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            for number, line in enumerate(lines, 1):
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    if number < len(lines):
                        raise ValueError(f"{self.path} line {number}: not valid JSON ({e})") from e
                    warnings.warn(f"{self.path} line {number}: incomplete last line (interrupted write) "
                                  "dropped; that run is redone", stacklevel=2)
            if len(self.rows) < len(lines):
                self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self._done = {self._key(row) for row in self.rows}

    def _key(self, row: Mapping[str, Any]) -> tuple:
        return tuple(row[k] for k in self.key_fields)

    def done(self, **key: Any) -> bool:
        """Whether the run with these ``key_fields`` values is already recorded."""
        return tuple(key[k] for k in self.key_fields) in self._done

    def add(self, row: Mapping[str, Any]) -> None:
        """Record a finished run (flushed and fsynced before returning)."""
        import os

        row = json.loads(json.dumps(dict(row), default=float))
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        self._done.add(self._key(row))


def quartiles(values: Iterable[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``values`` (NumPy's linear interpolation); NaNs if empty."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan, math.nan)
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


# ---------------------------------------------------------------------------------------------------
# Command-line scaffolding shared by scripts/bench_relax.py, bench_ts_search.py and bench_zpe.py
# ---------------------------------------------------------------------------------------------------
def select_molecules(paths: Sequence[str | Path], indices: Sequence[int] | None = None, stride: int = 1,
                     max_molecules: int | None = None, negative_modes: int | None = None,
                     smallest_first: bool = False, report: Callable[[str], None] = print) -> list[Molecule]:
    """Molecules of several sources, filtered and trimmed as the benchmark scripts' options say.

    Args:
        paths: sources for :func:`load_molecules`, concatenated in order.
        indices: raw indices or frame numbers taken from every source (default all).
        stride: then keep every ``stride``-th of them (5 takes the equilibrium geometries, variant 0, of
            ``data/embedded``, whose molecules have 5 consecutive variants).
        max_molecules: keep at most this many (after filtering and sorting).
        negative_modes: keep only molecules whose DFT Hessian has exactly this many negative modes
            (:func:`count_negative_modes`; 1: first-order saddles, the TS guesses of paper A.6.2).
        smallest_first: sort by the number of atoms (stable) before trimming.
        report: where the counts of what was kept go (one line each).

    Raises:
        ValueError: ``stride`` < 1; ``negative_modes`` given for a molecule without a DFT Hessian (the
            message names it); nothing left.
    """
    if stride < 1:
        raise ValueError(f"stride must be ≥ 1, got {stride}")
    molecules: list[Molecule] = []
    for path in paths:
        molecules += load_molecules(path, indices)[::stride]
    total = len(molecules)
    if negative_modes is not None:
        unlabelled = [m.name for m in molecules if m.dft_hessian is None]
        if unlabelled:
            raise ValueError(f"{unlabelled[0]} has no DFT Hessian to count negative modes in; give a labelled "
                             "HORM-format shard or turn the filter off")
        molecules = [m for m in molecules if count_negative_modes(m.dft_hessian, m.atoms) == negative_modes]
        report(f"{len(molecules)} of {total} molecules have exactly {negative_modes} negative DFT Hessian "
               "mode(s) (mass-weighted, Eckart-projected)")
    if smallest_first:
        molecules.sort(key=lambda m: len(m.atoms))
    if max_molecules is not None:
        molecules = molecules[:max_molecules]
    if not molecules:
        raise ValueError(f"no molecules selected from {[str(p) for p in paths]}")
    report(f"{len(molecules)} molecules: {', '.join(m.name for m in molecules)}")
    return molecules


def add_common_arguments(parser, data: Sequence[str], stride: int, output: str, max_molecules: int | None,
                         methods: Sequence[OptimizerSpec] = ()) -> None:
    """Add the options every downstream benchmark script shares to an ``argparse`` parser.

    ``--ckpt --device --data --indices --stride --max-molecules --smallest-first --output``, and, when
    ``methods`` are given, ``--methods`` (their keys), ``--energy`` and ``--time-limit``. Parse with
    :func:`parse_benchmark_args`, which resolves ``--stride``: ``stride`` applies to sources in the
    default ``data``'s folder when no ``--indices`` are given (5 picks the equilibrium geometries, variant
    0, of ``data/embedded``'s shards); any other input keeps every molecule unless ``--stride`` is given.
    """
    from hip.calculator import DEFAULT_CHECKPOINT

    parser.add_argument("--ckpt", default=str(DEFAULT_CHECKPOINT), help="model checkpoint (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--data", nargs="+", default=list(data),
                        help="HORM-format .lmdb shards or ASE-readable files (default: %(default)s)")
    parser.add_argument("--indices", type=int, nargs="+", help="raw indices / frames taken from each source")
    folders = sorted({str(Path(d).parent) for d in data})
    parser.add_argument("--stride", type=int, default=None,
                        help=f"keep every k-th (default: {stride} for shards in {', '.join(folders)} without "
                             "--indices, else 1)")
    parser.set_defaults(default_data_stride=stride)
    parser.add_argument("--max-molecules", type=int, default=max_molecules, help="default: %(default)s")
    parser.add_argument("--smallest-first", action="store_true", help="sort by atom count before trimming")
    parser.add_argument("--output", default=output, help="results directory, resumable (default: %(default)s)")
    if methods:
        parser.add_argument("--methods", nargs="+", choices=[m.key for m in methods],
                            default=[m.key for m in methods], help="default: all")
        parser.add_argument("--energy", choices=("work", "model"), default="work",
                            help="energy the trust-radius update sees: the force work along the path "
                                 "(default, see hip.optimize.WorkEnergy) or the model's energy head")
        parser.add_argument("--time-limit", type=float, default=60.0,
                            help="stop a run after this many seconds, counted as not converged; 0: no limit "
                                 "(default: %(default)s; keeps per-step AD/FD runs affordable on a CPU)")


def add_dft_arguments(parser) -> None:
    """Add ``--dft-basis`` and ``--dft-xc`` (HORM's ωB97X/6-31G(d) by default) to an ``argparse`` parser."""
    from hip.data.labelling import HORM_BASIS, HORM_XC

    parser.add_argument("--dft-basis", default=HORM_BASIS, help="DFT basis (default HORM's: %(default)s)")
    parser.add_argument("--dft-xc", default=HORM_XC, help="DFT functional (default HORM's: %(default)s)")


def parse_benchmark_args(parser, argv: Sequence[str] | None = None):
    """``parser.parse_args(argv)`` with ``--stride`` resolved (see :func:`add_common_arguments`)."""
    args = parser.parse_args(argv)
    if args.stride is None:
        folders = {Path(d).resolve().parent for d in parser.get_default("data")}
        default_input = args.indices is None and all(Path(d).resolve().parent in folders for d in args.data)
        args.stride = args.default_data_stride if default_input else 1
    del args.default_data_stride
    return args


def model_calculators(checkpoint: str | Path, device: str = "cpu") -> dict[str, Calculator]:
    """One :class:`hip.calculator.HIPCalculator` per Hessian method, sharing a single loaded model.

    Returns:
        ``{"hip": ..., "autodiff": ..., "finite_difference": ...}``.

    Raises:
        FileNotFoundError, CheckpointError: see :class:`~hip.calculator.HIPCalculator`.
    """
    from hip.calculator import HESSIAN_METHODS, HIPCalculator

    first = HIPCalculator(checkpoint, device=device)
    return {m: first if m == first.hessian_method else HIPCalculator(first.model, hessian_method=m)
            for m in HESSIAN_METHODS}


def attach(atoms: Atoms, calculator: Calculator, energy: str = "work") -> Atoms:
    """A copy of ``atoms`` carrying ``calculator``, wrapped in :class:`WorkEnergy` if ``energy == "work"``."""
    out = atoms.copy()
    out.calc = WorkEnergy(calculator) if energy == "work" else calculator
    return out


def common_settings(args) -> dict[str, Any]:
    """The settings of :func:`add_common_arguments` that change results, for :class:`ResultsLog`."""
    import hashlib

    ckpt = Path(args.ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest() if ckpt.is_file() else None
    return {"ckpt": str(ckpt.resolve()), "ckpt_sha256": digest,
            "data": [str(Path(p).resolve()) for p in args.data], "indices": args.indices, "stride": args.stride,
            "max_molecules": args.max_molecules, "smallest_first": args.smallest_first,
            "energy": getattr(args, "energy", None), "time_limit": getattr(args, "time_limit", None)}


def write_report(directory: str | Path, text: str, table: Mapping[str, Mapping[str, float]],
                 columns: Sequence[str], plot: Callable[[Path], None], name: str) -> None:
    """Print a benchmark's table ``text`` and save it as ``table.txt``; ``table`` (row label → column →
    value) as ``summary.csv`` with the given ``columns``; ``plot(path)`` draws ``<name>.png``; all in
    ``directory``, listed in a closing line."""
    import csv

    print(text)
    directory = Path(directory)
    (directory / "table.txt").write_text(text + "\n")
    with (directory / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", *columns])
        writer.writerows([label, *(values[c] for c in columns)] for label, values in table.items())
    plot(directory / f"{name}.png")
    print(f"wrote {directory / 'results.jsonl'}, summary.csv, table.txt, {name}.png")


@contextmanager
def figure(path: str | Path, ncols: int = 1, size: tuple[float, float] = (6.5, 4.2)):
    """A Matplotlib figure (Agg backend) with ``ncols`` axes, saved to ``path`` (150 dpi) and closed on exit.

    Yields:
        ``(fig, axes)``; ``axes`` is one Axes for ``ncols == 1``, else an array of them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=size)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=150)
    finally:
        plt.close(fig)
