"""PySCF at HORM's level of theory: labels, single points, TS verification and an ASE calculator.

Level of theory (``../shared/horm/README.md``, "Level of theory, checked"): PySCF ``dft.RKS`` with
``xc="wb97x"``, basis ``6-31g*`` with spherical d functions (``cart=False``), PySCF's default grid
(level 3), neutral closed-shell molecules. Recomputing HORM sample 83 this way reproduces the stored
labels to 4 meV (energy), 0.002 eV/Å (forces) and 0.03 eV/Å² (Hessian).

Units follow :mod:`hip.constants`: positions Å, energies eV, forces eV/Å, Hessians eV/Å². PySCF works
in Hartree and Bohr; the conversions happen in :func:`label_molecule` only.

The pieces:

* :func:`label_molecule` → :class:`Labels`: energy, forces and analytic Hessian of one geometry (what
  :mod:`hip.data.labelling` stores in HORM-format shards), with per-step wall times;
* :func:`compare_with_horm`: recompute one HORM entry and compare with its stored labels;
* :func:`dft_verify` → :class:`DFTCheck`: the paper's DFT check of a found transition state (A.6.2);
* :class:`DFTCalculator`: the same DFT as an ASE calculator (DFT relaxations, paper A.6.3).

PySCF is imported inside the functions that need it, so importing this module does not need it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from hip.constants import (
    ATOM_REFERENCE_ENERGY_EV,
    HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2,
    HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    HARTREE_TO_EV,
    formula,
)
from hip.data.store import read_entry

#: HORM's level of theory (``../shared/horm/README.md``).
HORM_XC = "wb97x"
HORM_BASIS = "6-31g*"
HORM_CART = False


@dataclass
class Labels:
    """DFT labels of one geometry, in hip's units.

    Attributes:
        numbers: atomic numbers ``[N]`` int64.
        positions: ``[N, 3]`` float64, Å.
        energy: total energy, eV.
        ae: ``energy − Σ ATOM_REFERENCE_ENERGY_EV[Z]``, eV (HORM's ``ae``).
        forces: ``−dE/dpos`` ``[N, 3]`` float64, eV/Å.
        hessian: ``d²E/dpos²`` ``[3N, 3N]`` float64, eV/Å², row/column index ``3·atom + xyz``
            (as computed: not symmetrised).
        timings: wall time of each step, s: ``"scf"``, ``"gradient"``, ``"hessian"``, ``"total"``.
        converged: whether the SCF converged.
        density: the converged AO density matrix (PySCF's ``mf.make_rdm1()``), a start for the next SCF.
    """

    numbers: np.ndarray
    positions: np.ndarray
    energy: float
    ae: float
    forces: np.ndarray
    hessian: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)
    converged: bool = True
    density: np.ndarray | None = field(default=None, repr=False)


def reference_energy(numbers: Sequence[int]) -> float:
    """``Σ ATOM_REFERENCE_ENERGY_EV[Z]`` (eV): the isolated-atom sum behind HORM's ``ae``.

    Raises:
        ValueError: an element has no reference energy (the message names it).
    """
    from ase.data import chemical_symbols

    missing = sorted({int(z) for z in numbers} - set(ATOM_REFERENCE_ENERGY_EV))
    if missing:
        names = ", ".join(f"{chemical_symbols[z] if 0 < z < len(chemical_symbols) else '?'} (Z={z})"
                          for z in missing)
        raise ValueError(f"no isolated-atom reference energy for {names}; known: Z in "
                         f"{sorted(ATOM_REFERENCE_ENERGY_EV)} (hip.constants.ATOM_REFERENCE_ENERGY_EV)")
    return float(sum(ATOM_REFERENCE_ENERGY_EV[int(z)] for z in numbers))


def hessian_to_flat_layout(hess: np.ndarray) -> np.ndarray:
    """PySCF's ``(N, N, 3, 3)`` Hessian ``[i, j, a, b] = d²E/dx_ia dx_jb`` → ``[3N, 3N]``.

    Row/column index ``3·atom + xyz``; units are unchanged. ``.reshape(-1)`` of the result is HORM's
    row-major flat ``hessian``.
    """
    n = hess.shape[0]
    if hess.shape != (n, n, 3, 3):
        raise ValueError(f"Hessian has shape {hess.shape}, expected (N, N, 3, 3)")
    return hess.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)


def build_pyscf_molecule(numbers: Sequence[int], positions: np.ndarray, basis: str = HORM_BASIS,
                         cart: bool = HORM_CART, verbose: int = 0):
    """A neutral, closed-shell ``pyscf.gto.Mole`` (positions in Å).

    Raises:
        ValueError: odd number of electrons (RKS needs a closed shell).
    """
    from pyscf import gto
    from pyscf.data.elements import ELEMENTS

    numbers = np.asarray(numbers, dtype=np.int64)
    if int(numbers.sum()) % 2:
        raise ValueError(f"odd number of electrons ({int(numbers.sum())}, Z={numbers.tolist()}); "
                         "RKS labelling needs a neutral closed-shell molecule")
    atom = [(ELEMENTS[int(z)], tuple(float(c) for c in xyz))
            for z, xyz in zip(numbers, positions, strict=True)]
    return gto.M(atom=atom, basis=basis, cart=cart, unit="Angstrom", charge=0, spin=0, verbose=verbose)


def label_molecule(
    numbers: Sequence[int],
    positions: np.ndarray,
    xc: str = HORM_XC,
    basis: str = HORM_BASIS,
    cart: bool = HORM_CART,
    hessian: bool = True,
    conv_tol: float | None = None,
    grid_level: int | None = None,
    max_memory_mb: int | None = None,
    initial_density: np.ndarray | None = None,
    grid_response: bool = False,
) -> Labels:
    """Energy, forces and analytic Hessian of one molecule with PySCF restricted Kohn-Sham.

    Defaults are HORM's level of theory (``../shared/horm/README.md``): ``dft.RKS``, ``xc="wb97x"``,
    basis ``6-31g*`` spherical (``cart=False``), PySCF's default grid and SCF settings. The Hessian is
    PySCF's analytic one (``mf.Hessian()``, ``pyscf.hessian.rks``), returned as computed (DFT Hessians
    are symmetric only to grid precision). The SCF uses PySCF's thread count (``OMP_NUM_THREADS``).

    Args:
        numbers: atomic numbers ``[N]``.
        positions: ``[N, 3]`` Å.
        xc, basis, cart: functional, basis set, Cartesian (True) or spherical (False) d functions.
        hessian: compute the analytic Hessian (else ``Labels.hessian`` is None).
        conv_tol: SCF energy convergence threshold, Hartree (None: PySCF's default 1e-9).
        grid_level: DFT grid level (None: PySCF's default 3).
        max_memory_mb: PySCF memory budget, MB (None: PySCF's default).
        initial_density: an AO density matrix to start the SCF from (``Labels.density`` of a nearby
            geometry of the same molecule: fewer SCF cycles, the same converged result); None: PySCF's guess.
        grid_response: include the DFT grid's dependence on the nuclei in the forces (PySCF's
            ``grid_response``), so that they are the exact derivative of the energy: needed to converge
            to Gaussian's tight criteria (without it the forces disagree with the energy by ~1e-5 Ha/Bohr
            and a trust-radius optimiser stalls there). False (HORM's labels): PySCF's default.

    Returns:
        :class:`Labels` in eV, eV/Å, eV/Å², with wall times of the SCF, gradient and Hessian steps.

    Raises:
        ValueError: an element without reference energy (checked before any DFT work), odd electron
            count, or positions of the wrong shape.
        RuntimeError: the SCF did not converge, even after a second-order (Newton) restart.
    """
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(numbers), 3):
        raise ValueError(f"positions have shape {positions.shape}, expected ({len(numbers)}, 3)")
    e_ref = reference_energy(numbers)  # fail before the expensive part (and before importing PySCF)
    from pyscf import dft

    mol = build_pyscf_molecule(numbers, positions, basis=basis, cart=cart)

    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    mf = dft.RKS(mol)
    mf.xc = xc
    if conv_tol is not None:
        mf.conv_tol = conv_tol
    if grid_level is not None:
        mf.grids.level = grid_level
    if max_memory_mb is not None:
        mf.max_memory = max_memory_mb
    e_h = mf.kernel(dm0=initial_density)
    if not mf.converged:
        mf = mf.newton()
        e_h = mf.kernel(mf.make_rdm1())
        if not mf.converged:
            raise RuntimeError(f"SCF did not converge for {formula(numbers)} (Z={numbers.tolist()}) "
                               f"with xc={xc}, basis={basis}, even with a Newton restart")
    timings["scf"] = time.perf_counter() - t_start

    t = time.perf_counter()
    gradient = mf.nuc_grad_method()
    gradient.grid_response = grid_response
    grad_h = gradient.kernel()  # (N, 3) Hartree/Bohr
    timings["gradient"] = time.perf_counter() - t

    hess_ev = None
    if hessian:
        import pyscf.hessian  # noqa: F401  (registers mf.Hessian in older PySCF versions)

        t = time.perf_counter()
        hess_h = mf.Hessian().kernel()  # (N, N, 3, 3) Hartree/Bohr²
        timings["hessian"] = time.perf_counter() - t
        hess_ev = hessian_to_flat_layout(np.asarray(hess_h)) * HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2
    timings["total"] = time.perf_counter() - t_start

    energy = float(e_h) * HARTREE_TO_EV
    return Labels(
        numbers=numbers,
        positions=positions,
        energy=energy,
        ae=energy - e_ref,
        forces=-np.asarray(grad_h) * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
        hessian=hess_ev,
        timings=timings,
        converged=bool(mf.converged),
        density=np.asarray(mf.make_rdm1()),
    )


def compare_with_horm(path: str | os.PathLike, index: int, **label_kwargs) -> dict[str, float]:
    """Recompute HORM entry ``index`` of ``path`` with :func:`label_molecule` and compare with its labels.

    Reads the entry with :func:`hip.data.store.read_entry` (through the process's shared environment).

    Returns:
        ``natoms``, ``delta_energy_mev`` (ours − stored), ``delta_ae_mev``, ``force_mae`` (eV/Å),
        ``hessian_mae`` (eV/Å²), ``label_mean_abs_force``, ``label_mean_abs_hessian`` and the step
        timings ``time_scf``, ``time_gradient``, ``time_hessian``, ``time_total`` (s).
    """
    ref = read_entry(path, index)
    labels = label_molecule(ref.charges.numpy(), ref.pos.double().numpy(), **label_kwargs)
    ref_h = ref.hessian.double().numpy()
    return {
        "natoms": float(len(labels.numbers)),
        "delta_energy_mev": 1000.0 * (labels.energy - float(ref.energy)),
        "delta_ae_mev": 1000.0 * (labels.ae - float(ref.ae)),
        "force_mae": float(np.abs(labels.forces - ref.forces.double().numpy()).mean()),
        "hessian_mae": float(np.abs(labels.hessian.reshape(-1) - ref_h).mean()),
        "label_mean_abs_force": float(ref.forces.abs().mean()),
        "label_mean_abs_hessian": float(np.abs(ref_h).mean()),
        **{f"time_{k}": v for k, v in labels.timings.items()},
    }


@dataclass
class DFTCheck:
    """DFT verification of a found transition state (paper A.6.2, Fig. 4).

    Attributes:
        negative_modes: imaginary modes below −10 cm⁻¹ of the DFT Hessian after mass weighting and Eckart
            projection (None if the DFT calculation failed).
        force_rms: RMS of the DFT force components, Hartree/Bohr (None if it failed).
        ts: exactly one imaginary mode below −10 cm⁻¹ (:func:`hip.extrema.is_first_order_saddle`, ReactBench's
            TS rule: "DFT-verified TS success").
        converged_ts: ``ts`` and ``force_rms`` < 2e-3 Hartree/Bohr ("DFT-verified converged and TS success",
            the paper's threshold; ReactBench's code uses :data:`REACTBENCH_FORCE_RMS_THRESHOLD`).
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
    #: The threshold in ReactBench's code, Hartree/Bohr.
    REACTBENCH_FORCE_RMS_THRESHOLD: ClassVar[float] = 3e-3


def dft_verify(atoms: Atoms, **label_kwargs) -> DFTCheck:
    """Recompute ``atoms`` with DFT (:func:`label_molecule`: PySCF ωB97X/6-31G(d),
    HORM's level, unless ``label_kwargs`` say otherwise, e.g. ``basis="sto-3g"`` for a quick test) and
    apply the paper's two checks: one imaginary mode (below −10 cm⁻¹, ReactBench's TS rule) and a force RMS
    below 2e-3 Hartree/Bohr (the paper; ReactBench's code: 3e-3).

    Minutes per molecule of 10–20 atoms on 2 CPU cores (the analytic Hessian dominates).

    Returns:
        :class:`DFTCheck`. A failed calculation (an element without reference energy, an odd electron
        count, an SCF that does not converge) is returned as a failed check with its ``error``, not
        raised, so that a benchmark records it and moves on.
    """
    from hip.extrema import TS_THRESHOLD_CM1
    from hip.optimize import count_negative_modes
    from hip.vibrations import vibrational_analysis

    start = time.perf_counter()
    try:
        labels = label_molecule(atoms.numbers, atoms.positions, hessian=True, **label_kwargs)
    except (ValueError, RuntimeError) as e:
        return DFTCheck(None, None, False, False, time.perf_counter() - start, error=f"{type(e).__name__}: {e}")
    modes = vibrational_analysis(labels.hessian, atoms.positions, atoms.numbers)
    n_negative = count_negative_modes(labels.hessian, atoms, TS_THRESHOLD_CM1)
    force_rms = float(np.sqrt((labels.forces**2).mean())) / HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM
    return DFTCheck(n_negative, force_rms, n_negative == 1,
                    n_negative == 1 and force_rms < DFTCheck.FORCE_RMS_THRESHOLD, labels.timings["total"],
                    [round(float(f), 1) for f in modes.frequencies[:4]])


class DFTCalculator(Calculator):
    """ASE calculator: energy (eV) and forces (eV/Å) from PySCF at HORM's level of theory.

    Wraps :func:`label_molecule` (``hessian=False``), so a DFT relaxation (paper
    A.6.3: the ZPE reference geometries) uses exactly the labelling settings; ``get_hessian`` adds
    PySCF's analytic Hessian (eV/Å²). One SCF per new geometry, started from the previous geometry's
    density (same atoms); the last :data:`HESSIAN_CACHE` Hessians are kept by geometry, so asking twice
    for the Hessian of a stationary point (TS check, IRC start, thermochemistry) computes it once.

    Args:
        **label_kwargs: passed to ``label_molecule`` (``basis``, ``xc``, ``conv_tol``, ...).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "forces", "hessian"]
    HESSIAN_CACHE: ClassVar[int] = 8

    def __init__(self, **label_kwargs):
        super().__init__()
        self.label_kwargs = label_kwargs
        self._density: tuple[bytes, np.ndarray] | None = None  # (atomic numbers, AO density matrix)
        self._hessians: dict[bytes, np.ndarray] = {}

    @staticmethod
    def _key(atoms: Atoms) -> bytes:
        return atoms.numbers.tobytes() + np.asarray(atoms.positions, dtype=np.float64).tobytes()

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        """Fill ``self.results``: ``energy`` eV, ``forces`` (N, 3) eV/Å, and ``hessian`` (3N, 3N) eV/Å² if asked.

        Raises:
            ValueError, RuntimeError: see :func:`label_molecule`.
        """
        super().calculate(atoms, properties, system_changes)
        numbers = self.atoms.numbers.tobytes()
        start = self._density[1] if self._density is not None and self._density[0] == numbers else None
        labels = label_molecule(self.atoms.numbers, self.atoms.positions, hessian="hessian" in properties,
                                initial_density=start, **self.label_kwargs)
        self._density = (numbers, labels.density)
        self.results = {"energy": labels.energy, "forces": labels.forces}
        if labels.hessian is not None:
            self.results["hessian"] = labels.hessian
            self._hessians[self._key(self.atoms)] = labels.hessian
            while len(self._hessians) > self.HESSIAN_CACHE:
                self._hessians.pop(next(iter(self._hessians)))

    def get_hessian(self, atoms: Atoms | None = None) -> np.ndarray:
        """PySCF's analytic Hessian of ``atoms``, (3N, 3N) eV/Å² (cached by geometry)."""
        cached = self._hessians.get(self._key(atoms if atoms is not None else self.atoms))
        if cached is not None:
            return cached.copy()
        return self.get_property("hessian", atoms)
