"""DFT labelling in HORM's format: geometries → ωB97X/6-31G* energy, forces and analytic Hessian → LMDB.

Level of theory (``../shared/horm/README.md``, "Level of theory, checked"): PySCF ``dft.RKS`` with
``xc="wb97x"``, basis ``6-31g*`` with spherical d functions (``cart=False``), PySCF's default grid
(level 3), neutral closed-shell molecules. Recomputing HORM sample 83 this way reproduces the stored
labels to 4 meV (energy), 0.002 eV/Å (forces) and 0.03 eV/Å² (Hessian).

Units follow :mod:`hip.constants`: positions Å, energies eV, forces eV/Å, Hessians eV/Å². PySCF works
in Hartree and Bohr; the conversions happen in :func:`label_molecule` only.

The pieces:

* geometries: :func:`g2_geometry` (ASE's G2 collection by name), :func:`read_geometries` (any
  ASE-readable file, all frames), :func:`displace` (seeded Gaussian displacements, off-equilibrium
  geometries in the spirit of Transition1x), :func:`plan_labelling` (the deterministic list of
  geometries and their LMDB destinations);
* labels: :func:`label_molecule` (one PySCF calculation, with per-step wall times);
* storage: :func:`make_horm_data` (a ``torch_geometric`` ``Data`` with exactly HORM's fields and
  dtypes), :func:`open_lmdb`, :func:`write_entry` (one committed transaction per molecule, resumable),
  :func:`compact_lmdb`, :func:`read_entry`;
* checks: :func:`compare_with_horm` (recompute one HORM entry), :func:`dataset_statistics`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np
import torch
from torch_geometric.data import Data

from hip.constants import (
    ATOM_REFERENCE_ENERGY_EV,
    BOHR_TO_ANGSTROM,
    HARTREE_TO_EV,
    HORM_ELEMENTS,
    MIN_INTERATOMIC_DISTANCE,
)
from hip.data.horm import load_value

#: HORM's level of theory (``../shared/horm/README.md``).
HORM_XC = "wb97x"
HORM_BASIS = "6-31g*"
HORM_CART = False

#: HORM's fields and dtypes, in the order of the README's table.
HORM_FIELDS: dict[str, torch.dtype] = {
    "pos": torch.float32,
    "one_hot": torch.float32,
    "charges": torch.int32,
    "natoms": torch.int64,
    "energy": torch.float32,
    "ae": torch.float32,
    "forces": torch.float32,
    "hessian": torch.float32,
    "rxn": torch.int64,
}

LENGTH_KEY = b"length"
#: Map size for new LMDB files. LMDB only grows the file to the pages in use; 1 GiB is a ceiling.
DEFAULT_MAP_SIZE = 1 << 30

_HESSIAN_FACTOR = HARTREE_TO_EV / BOHR_TO_ANGSTROM**2  # Hartree/Bohr² → eV/Å²
_FORCE_FACTOR = HARTREE_TO_EV / BOHR_TO_ANGSTROM  # Hartree/Bohr → eV/Å


# --------------------------------------------------------------------------------------------------
# Geometries
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """One geometry to label.

    Attributes:
        name: human-readable name, e.g. ``"CH3OH"`` or ``"file.xyz:3"``.
        numbers: atomic numbers, int64 ``[N]``.
        positions: Cartesian positions, float64 ``[N, 3]``, Å.
    """

    name: str
    numbers: np.ndarray
    positions: np.ndarray


def _as_geometry(name: str, numbers: Sequence[int], positions: np.ndarray) -> Geometry:
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(numbers), 3):
        raise ValueError(f"{name}: positions have shape {positions.shape}, expected ({len(numbers)}, 3)")
    return Geometry(name, numbers, positions)


def g2_geometry(name: str) -> Geometry:
    """Equilibrium geometry of molecule ``name`` from ASE's G2 collection (``ase.collections.g2``).

    Args:
        name: a G2 name, e.g. ``"H2O"``, ``"CH3OH"``, ``"CH3CH2OH"``.

    Returns:
        a :class:`Geometry` with positions in Å.

    Raises:
        KeyError: ``name`` is not in G2 (the message lists close names).
        ValueError: the G2 entry is open-shell (non-zero initial magnetic moments), which the
            restricted (RKS) calculation cannot describe.
    """
    from ase.collections import g2

    if name not in g2.names:
        close = [n for n in g2.names if n.lower().startswith(name[:2].lower())]
        raise KeyError(f"molecule {name!r} is not in ASE's G2 collection; similar names: {close}")
    atoms = g2[name]
    if np.any(np.abs(atoms.get_initial_magnetic_moments()) > 1e-8):
        raise ValueError(f"G2 molecule {name!r} is open-shell (initial magnetic moments set); RKS needs a "
                         "closed-shell molecule")
    return _as_geometry(name, atoms.numbers, atoms.positions)


def read_geometries(path: str | os.PathLike) -> list[Geometry]:
    """All frames of an ASE-readable file (xyz, extxyz, traj, …) as geometries named ``"file:i"``.

    Args:
        path: file readable by ``ase.io.read``; every frame becomes one geometry (positions in Å).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    import ase.io

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"geometry file {path} does not exist")
    frames = ase.io.read(path, index=":")
    return [_as_geometry(f"{path.name}:{i}", a.numbers, a.positions) for i, a in enumerate(frames)]


def min_distance(positions: np.ndarray) -> float:
    """Smallest interatomic distance (Å) of positions ``[N, 3]`` Å; ``inf`` for a single atom."""
    positions = np.asarray(positions, dtype=np.float64)
    if len(positions) < 2:
        return float("inf")
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    return float(d[np.triu_indices(len(positions), k=1)].min())


def displace(
    positions: np.ndarray,
    sigma: float,
    rng: np.random.Generator,
    min_dist: float = MIN_INTERATOMIC_DISTANCE,
    max_tries: int = 100,
) -> np.ndarray:
    """Positions plus i.i.d. Gaussian noise of standard deviation ``sigma`` (Å) on every coordinate.

    Draws are repeated (from the same generator, so the result stays seeded) until no two atoms are
    closer than ``min_dist`` Å.

    Args:
        positions: ``[N, 3]`` Å.
        sigma: displacement standard deviation per Cartesian coordinate, Å (0.05–0.1 Å gives
            moderately off-equilibrium geometries; their forces are a few eV/Å).
        rng: the NumPy generator to draw from.
        min_dist: smallest allowed interatomic distance, Å.
        max_tries: draws before giving up.

    Returns:
        displaced positions ``[N, 3]`` float64, Å.

    Raises:
        ValueError: ``sigma`` is negative, or no acceptable draw in ``max_tries``.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 Å, got {sigma}")
    positions = np.asarray(positions, dtype=np.float64)
    for _ in range(max_tries):
        new = positions + rng.normal(0.0, sigma, size=positions.shape)
        if min_distance(new) >= min_dist:
            return new
    raise ValueError(f"no displacement with sigma={sigma} Å kept all atoms {min_dist} Å apart in "
                     f"{max_tries} tries")


def displacement_rng(seed: int, name: str, index: int) -> np.random.Generator:
    """The generator for displaced copy ``index`` of molecule ``name``: a function of all three only.

    Uses a stable hash of ``name`` (not Python's salted ``hash``), so adding or reordering molecules
    does not change any other molecule's geometries.
    """
    name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, name_key, index]))


@dataclass(frozen=True)
class PlannedGeometry:
    """A geometry with its place in the output.

    Attributes:
        geometry: what to label.
        molecule_id: index of the source molecule in the input list; stored as HORM's ``rxn``.
        variant: 0 for the input (equilibrium) geometry, k ≥ 1 for the k-th displaced copy.
        split: name of the output it goes to (``"train"``, ``"val"`` or ``"all"``).
        key: its integer LMDB key in that output.
    """

    geometry: Geometry
    molecule_id: int
    variant: int
    split: str
    key: int


def split_molecules(n_molecules: int, val_fraction: float, seed: int) -> list[str]:
    """Assign each molecule to ``"train"`` or ``"val"``; all geometries of a molecule share its split.

    ``round(val_fraction * n_molecules)`` molecules (at least 1 when ``val_fraction > 0`` and there are
    at least 2 molecules; never all of them) are drawn for validation with ``numpy.random.default_rng
    (seed)``.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(val_fraction * n_molecules)
    if val_fraction > 0 and n_molecules >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, n_molecules - 1) if n_molecules > 0 else 0
    val = set(np.random.default_rng(seed).permutation(n_molecules)[:n_val].tolist())
    return ["val" if i in val else "train" for i in range(n_molecules)]


def plan_labelling(
    molecules: Sequence[Geometry],
    displacements: int = 0,
    sigma: float = 0.05,
    seed: int = 0,
    include_equilibrium: bool = True,
    splits: Sequence[str] | None = None,
) -> list[PlannedGeometry]:
    """The deterministic list of geometries to label and their LMDB keys.

    For every molecule (in order): the input geometry (unless ``include_equilibrium`` is False), then
    ``displacements`` copies displaced by :func:`displace` with generators from
    :func:`displacement_rng` ``(seed, name, k)``. Keys count up from 0 within each split, in this order.
    The same arguments always give the same plan, which is what makes re-runs resume.

    Args:
        molecules: the source geometries (Å).
        displacements: displaced copies per molecule, ≥ 0.
        sigma: displacement standard deviation, Å.
        seed: base seed for the displacements.
        include_equilibrium: label the input geometry itself too.
        splits: one split name per molecule (see :func:`split_molecules`); default all ``"all"``.

    Raises:
        ValueError: negative ``displacements``, nothing to label, or ``splits`` of the wrong length.
    """
    if displacements < 0:
        raise ValueError(f"displacements must be >= 0, got {displacements}")
    if not include_equilibrium and displacements == 0:
        raise ValueError("nothing to label: no equilibrium geometry and no displacements")
    splits = list(splits) if splits is not None else ["all"] * len(molecules)
    if len(splits) != len(molecules):
        raise ValueError(f"{len(splits)} split names for {len(molecules)} molecules")
    next_key: dict[str, int] = {}
    plan = []
    for mol_id, (mol, split) in enumerate(zip(molecules, splits, strict=True)):
        variants = ([0] if include_equilibrium else []) + list(range(1, displacements + 1))
        for k in variants:
            if k == 0:
                pos = mol.positions
            else:
                pos = displace(mol.positions, sigma, displacement_rng(seed, mol.name, k))
            key = next_key.get(split, 0)
            next_key[split] = key + 1
            plan.append(PlannedGeometry(Geometry(mol.name, mol.numbers, pos), mol_id, k, split, key))
    return plan


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


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
    """

    numbers: np.ndarray
    positions: np.ndarray
    energy: float
    ae: float
    forces: np.ndarray
    hessian: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)
    converged: bool = True


def formula(numbers: Sequence[int]) -> str:
    """Hill-order chemical formula of atomic numbers, e.g. ``[8, 1, 1]`` → ``"H2O"``."""
    from ase.data import chemical_symbols
    from ase.formula import Formula

    return Formula("".join(chemical_symbols[int(z)] for z in numbers)).format("hill")


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
    e_h = mf.kernel()
    if not mf.converged:
        mf = mf.newton()
        e_h = mf.kernel(mf.make_rdm1())
        if not mf.converged:
            raise RuntimeError(f"SCF did not converge for {formula(numbers)} (Z={numbers.tolist()}) "
                               f"with xc={xc}, basis={basis}, even with a Newton restart")
    timings["scf"] = time.perf_counter() - t_start

    t = time.perf_counter()
    grad_h = mf.nuc_grad_method().kernel()  # (N, 3) Hartree/Bohr
    timings["gradient"] = time.perf_counter() - t

    hess_ev = None
    if hessian:
        import pyscf.hessian  # noqa: F401  (registers mf.Hessian in older PySCF versions)

        t = time.perf_counter()
        hess_h = mf.Hessian().kernel()  # (N, N, 3, 3) Hartree/Bohr²
        timings["hessian"] = time.perf_counter() - t
        hess_ev = hessian_to_flat_layout(np.asarray(hess_h)) * _HESSIAN_FACTOR
    timings["total"] = time.perf_counter() - t_start

    energy = float(e_h) * HARTREE_TO_EV
    return Labels(
        numbers=numbers,
        positions=positions,
        energy=energy,
        ae=energy - e_ref,
        forces=-np.asarray(grad_h) * _FORCE_FACTOR,
        hessian=hess_ev,
        timings=timings,
        converged=bool(mf.converged),
    )


# --------------------------------------------------------------------------------------------------
# HORM-format LMDB
# --------------------------------------------------------------------------------------------------


def one_hot_elements(numbers: Sequence[int]) -> torch.Tensor:
    """HORM's ``one_hot`` ``[N, 5]`` float32 over (H, C, N, O, F).

    Raises:
        ValueError: an element outside HORM's set (the message names it).
    """
    index = {z: i for i, z in enumerate(HORM_ELEMENTS)}
    bad = sorted({int(z) for z in numbers} - set(index))
    if bad:
        raise ValueError(f"elements Z={bad} are not in HORM's one-hot set Z={list(HORM_ELEMENTS)}")
    out = torch.zeros(len(numbers), len(HORM_ELEMENTS), dtype=torch.float32)
    out[torch.arange(len(numbers)), torch.tensor([index[int(z)] for z in numbers])] = 1.0
    return out


def make_horm_data(labels: Labels, rxn: int) -> Data:
    """A ``torch_geometric.data.Data`` with exactly HORM's fields and dtypes (see :data:`HORM_FIELDS`).

    ``pos`` [N,3] float32 Å, ``one_hot`` [N,5] float32, ``charges`` [N] int32 (atomic numbers),
    ``natoms`` [] int64, ``energy`` and ``ae`` [] float32 eV, ``forces`` [N,3] float32 eV/Å,
    ``hessian`` [(3N)²] float32 eV/Å² row-major, ``rxn`` [] int64 (here: the molecule id).

    Raises:
        ValueError: ``labels.hessian`` is None, or an element outside HORM's one-hot set.
    """
    if labels.hessian is None:
        raise ValueError("labels have no Hessian; HORM entries need one")
    n = len(labels.numbers)
    return Data(
        pos=torch.as_tensor(labels.positions, dtype=torch.float32),
        one_hot=one_hot_elements(labels.numbers),
        charges=torch.as_tensor(labels.numbers, dtype=torch.int32),
        natoms=torch.tensor(n, dtype=torch.int64),
        energy=torch.tensor(labels.energy, dtype=torch.float32),
        ae=torch.tensor(labels.ae, dtype=torch.float32),
        forces=torch.as_tensor(labels.forces, dtype=torch.float32),
        hessian=torch.as_tensor(labels.hessian, dtype=torch.float32).reshape(-1),
        rxn=torch.tensor(int(rxn), dtype=torch.int64),
    )


def open_lmdb(
    path: str | os.PathLike, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE
) -> lmdb.Environment:
    """Open a HORM-style LMDB file (``subdir=False``); writable ones are created with parent folders.

    The caller closes the returned environment. py-lmdb ≥ 3 refuses to open a file that is already
    open in the same process (e.g. by :func:`hip.data.horm.open_shard`).

    Raises:
        FileNotFoundError: ``readonly`` and ``path`` does not exist.
        RuntimeError: the file is already open in this process, or is not an LMDB file.
    """
    path = Path(path)
    try:
        if readonly:
            if not path.exists():
                raise FileNotFoundError(f"LMDB file {path} does not exist")
            return lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        return lmdb.open(str(path), subdir=False, map_size=map_size, readahead=False)
    except lmdb.Error as e:
        raise RuntimeError(f"cannot open LMDB file {path}: {e}") from e


def lmdb_length(env: lmdb.Environment) -> int:
    """The pickled int under ``b"length"`` (0 if absent).

    Raises:
        HormDataError: the value cannot be unpickled or names a global (refused unrun).
    """
    with env.begin() as txn:
        raw = txn.get(LENGTH_KEY)
    return 0 if raw is None else int(load_value(raw, f"LMDB {env.path()} key b'length'"))


def read_entry(env: lmdb.Environment, key: int) -> Data:
    """The ``Data`` stored under ``str(key).encode()``.

    Raises:
        KeyError: no such key (the message names the file and key).
        HormDataError: the value cannot be unpickled or names a global outside
            :data:`hip.safe_loading.ENTRY_GLOBALS` (refused unrun).
    """
    with env.begin() as txn:
        raw = txn.get(str(key).encode())
    if raw is None:
        raise KeyError(f"key {key} not in LMDB {env.path()}")
    return load_value(raw, f"LMDB {env.path()} key b'{key}'")


def has_entry(env: lmdb.Environment, key: int) -> bool:
    """Whether ``str(key).encode()`` is present."""
    with env.begin() as txn:
        return txn.get(str(key).encode()) is not None


def write_entry(env: lmdb.Environment, key: int, data: Data) -> bool:
    """Store ``data`` under ``str(key).encode()`` and set ``b"length"``, in one committed transaction.

    Keys are written in order (0, 1, 2, …), so ``b"length"`` = number of entries and readers can use
    ``range(length)``. An existing key is left alone (resume), so re-running never duplicates.

    Returns:
        True if written, False if the key was already present.

    Raises:
        ValueError: ``key`` would leave a gap (it is larger than the current length).
    """
    k = str(key).encode()
    with env.begin(write=True) as txn:
        if txn.get(k) is not None:
            return False
        raw = txn.get(LENGTH_KEY)
        length = 0 if raw is None else int(load_value(raw, f"LMDB {env.path()} key b'length'"))
        if key != length:
            raise ValueError(f"LMDB {env.path()}: writing key {key} would leave a gap (length is {length}); "
                             "entries must be written in key order")
        txn.put(k, pickle.dumps(data))
        txn.put(LENGTH_KEY, pickle.dumps(length + 1))
    return True


def check_planned_entry(env: lmdb.Environment, planned: PlannedGeometry, atol: float = 1e-4) -> None:
    """Check that an already stored entry is the planned geometry (same atoms, positions within ``atol`` Å).

    Raises:
        ValueError: it is not: the inputs (molecules, seed, sigma, order) changed since the file was
            written. The message names file, key and field.
    """
    data = read_entry(env, planned.key)
    where = f"LMDB {env.path()} key {planned.key} ({planned.geometry.name}, variant {planned.variant})"
    if data.charges.tolist() != planned.geometry.numbers.tolist():
        raise ValueError(f"{where}: stored 'charges' {data.charges.tolist()} differ from the planned atoms "
                         f"{planned.geometry.numbers.tolist()}; the inputs changed, use a new output")
    diff = float(np.abs(data.pos.double().numpy() - planned.geometry.positions).max())
    if diff > atol:
        raise ValueError(f"{where}: stored 'pos' differ from the planned geometry by {diff:.3g} Å; the "
                         "inputs (seed, sigma, molecules, order) changed, use a new output")


def compact_lmdb(path: str | os.PathLike) -> int:
    """Rewrite an LMDB file compactly (``env.copy(..., compact=True)``) in place; returns its size (bytes).

    Must not run while another process writes to ``path``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".compact")
    tmp.unlink(missing_ok=True)
    env = open_lmdb(path, readonly=True)
    try:
        env.copy(str(tmp), compact=True)
    finally:
        env.close()
    os.replace(tmp, path)
    Path(str(path) + "-lock").unlink(missing_ok=True)
    return path.stat().st_size


def iter_entries(path: str | os.PathLike) -> Iterator[Data]:
    """Every entry ``0 … length−1`` of a HORM-format LMDB file."""
    env = open_lmdb(path, readonly=True)
    try:
        for i in range(lmdb_length(env)):
            yield read_entry(env, i)
    finally:
        env.close()


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def compare_with_horm(path: str | os.PathLike, index: int, **label_kwargs) -> dict[str, float]:
    """Recompute HORM entry ``index`` of ``path`` with :func:`label_molecule` and compare with its labels.

    Reads the entry with :func:`read_entry` (HORM format, ``subdir=False``).

    Returns:
        ``natoms``, ``delta_energy_mev`` (ours − stored), ``delta_ae_mev``, ``force_mae`` (eV/Å),
        ``hessian_mae`` (eV/Å²), ``label_mean_abs_force``, ``label_mean_abs_hessian`` and the step
        timings ``time_scf``, ``time_gradient``, ``time_hessian``, ``time_total`` (s).
    """
    env = open_lmdb(path, readonly=True)
    try:
        ref = read_entry(env, index)
    finally:
        env.close()
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


def dataset_statistics(paths: Sequence[str | os.PathLike]) -> dict[str, object]:
    """Summary of HORM-format LMDB files, for the data card.

    Returns:
        ``entries``, ``molecules`` (distinct ``rxn``), ``atoms_min/median/max``, ``element_counts``
        (symbol → atoms), ``mean_abs_forces`` (eV/Å), ``mean_abs_hessian`` (eV/Å², over all entries of
        all Hessians), ``max_asymmetry`` (max |H − Hᵀ|, eV/Å²), ``energy_min/max`` and ``ae_min/max`` (eV),
        and per file the entry count and molecule ids.
    """
    from ase.data import chemical_symbols

    natoms, rxns, f_abs, h_abs, energies, aes = [], set(), [], [], [], []
    elements: dict[str, int] = {}
    per_file: dict[str, dict[str, object]] = {}
    max_asym = 0.0
    for path in paths:
        ids = set()
        count = 0
        for d in iter_entries(path):
            count += 1
            n = int(d.natoms)
            natoms.append(n)
            rxns.add(int(d.rxn))
            ids.add(int(d.rxn))
            for z in d.charges.tolist():
                elements[chemical_symbols[z]] = elements.get(chemical_symbols[z], 0) + 1
            f_abs.append(d.forces.abs().reshape(-1))
            h = d.hessian.reshape(3 * n, 3 * n)
            h_abs.append(h.abs().reshape(-1))
            max_asym = max(max_asym, float((h - h.T).abs().max()))
            energies.append(float(d.energy))
            aes.append(float(d.ae))
        per_file[str(path)] = {"entries": count, "molecule_ids": sorted(ids)}
    if not natoms:
        raise ValueError(f"no entries in {[str(p) for p in paths]}")
    return {
        "entries": len(natoms),
        "molecules": len(rxns),
        "atoms_min": min(natoms),
        "atoms_median": float(np.median(natoms)),
        "atoms_max": max(natoms),
        "element_counts": dict(sorted(elements.items(), key=lambda kv: -kv[1])),
        "mean_abs_forces": float(torch.cat(f_abs).double().mean()),
        "mean_abs_hessian": float(torch.cat(h_abs).double().mean()),
        "max_asymmetry": max_asym,
        "energy_min": min(energies),
        "energy_max": max(energies),
        "ae_min": min(aes),
        "ae_max": max(aes),
        "files": per_file,
    }
