"""The DFT labelling plan: geometries → displaced copies → their keys in HORM-format LMDB files.

What a run of ``scripts/label_dft.py`` labels, and where each labelled geometry goes, is decided here,
deterministically, so that a re-run resumes where the last one stopped:

* geometries: :func:`g2_geometry` (ASE's G2 collection by name), :func:`read_geometries` (any
  ASE-readable file, all frames), :func:`displace` (seeded Gaussian displacements, off-equilibrium
  geometries in the spirit of Transition1x), :func:`split_molecules` (train/val by molecule),
  :func:`plan_labelling` (the list of geometries and their LMDB destinations);
* entries: :func:`make_horm_data` (DFT labels as a HORM entry), :func:`check_planned_entry` (a stored
  entry is the planned geometry);
* checks: :func:`dataset_statistics` (for the data card).

The DFT itself (PySCF at HORM's ωB97X/6-31G(d), :func:`hip.dft.label_molecule`) lives in :mod:`hip.dft`;
reading and writing the LMDB files (one committed transaction per molecule, resumable; compaction) in
:mod:`hip.data.store`. Units: positions Å, energies eV, forces eV/Å, Hessians eV/Å².
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch_geometric.data import Data

from hip.constants import MIN_INTERATOMIC_DISTANCE
from hip.data.store import iter_entries, make_entry, read_entry

if TYPE_CHECKING:
    from hip.dft import Labels


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
# HORM-format entries (the format and its reader/writer: hip.data.store)
# --------------------------------------------------------------------------------------------------


def make_horm_data(labels: Labels, rxn: int) -> Data:
    """The HORM entry of DFT ``labels`` (:func:`hip.data.store.make_entry`: exactly HORM's fields and dtypes).

    ``pos`` [N,3] float32 Å, ``one_hot`` [N,5] float32, ``charges`` [N] int32 (atomic numbers),
    ``natoms`` [] int64, ``energy`` and ``ae`` [] float32 eV, ``forces`` [N,3] float32 eV/Å,
    ``hessian`` [(3N)²] float32 eV/Å² row-major, ``rxn`` [] int64 (here: the molecule id).

    Raises:
        ValueError: ``labels.hessian`` is None, or an element outside HORM's one-hot set.
    """
    if labels.hessian is None:
        raise ValueError("labels have no Hessian; HORM entries need one")
    return make_entry(labels.numbers, labels.positions, labels.energy, labels.ae, labels.forces, labels.hessian,
                      rxn)


def check_planned_entry(path: str | os.PathLike, planned: PlannedGeometry, atol: float = 1e-4) -> None:
    """Check that the entry stored under ``planned.key`` in shard ``path`` is the planned geometry (same
    atoms, positions within ``atol`` Å).

    Raises:
        KeyError: the key is absent.
        ValueError: it is not: the inputs (molecules, seed, sigma, order) changed since the file was
            written. The message names file, key and field.
    """
    data = read_entry(path, planned.key)
    where = f"LMDB {path} key {planned.key} ({planned.geometry.name}, variant {planned.variant})"
    if data.charges.tolist() != planned.geometry.numbers.tolist():
        raise ValueError(f"{where}: stored 'charges' {data.charges.tolist()} differ from the planned atoms "
                         f"{planned.geometry.numbers.tolist()}; the inputs changed, use a new output")
    diff = float(np.abs(data.pos.double().numpy() - planned.geometry.positions).max())
    if diff > atol:
        raise ValueError(f"{where}: stored 'pos' differ from the planned geometry by {diff:.3g} Å; the "
                         "inputs (seed, sigma, molecules, order) changed, use a new output")


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
