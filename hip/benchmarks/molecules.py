"""The benchmarks' molecules: loaded from HORM-format shards or ASE-readable files, selected and noised.

Positions Å, DFT Hessians eV/Å², DFT forces eV/Å.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from hip.data.labelling import displace
from hip.optimize import count_negative_modes


@dataclass
class Molecule:
    """One input geometry and, when the source has them, its DFT labels.

    Attributes:
        name: where it came from, e.g. ``"sample_100.lmdb:83"`` (shard and raw index) or ``"x.xyz:2"``.
        atoms: the geometry (positions Å), no calculator attached.
        dft_hessian: (3N, 3N) float64 DFT Hessian, eV/Å², or None.
        dft_forces: (N, 3) float64 DFT forces, eV/Å, or None.
        role: ``"reactant"``, ``"ts"`` or ``"product"`` for a molecule of the reaction set, else None.
    """

    name: str
    atoms: Atoms
    dft_hessian: np.ndarray | None = None
    dft_forces: np.ndarray | None = None
    role: str | None = None


def _is_horm(path: Path) -> bool:
    return (path.is_dir() and not _is_reaction_set(path)) or path.suffix == ".lmdb"


def _is_reaction_set(path: Path) -> bool:
    return path.is_dir() and (path / "guesses").is_dir()


def _reaction_set_molecules(path: Path) -> list[Molecule]:
    from hip.data.reactions import ROLES, load_reaction_set

    return [Molecule(f"{r.name}:{role}", Atoms(numbers=atoms.numbers, positions=atoms.positions),
                     r.hessians[role], atoms.get_forces(), role)
            for r in load_reaction_set(path) for role, atoms in zip(ROLES, (r.reactant, r.ts, r.product), strict=True)]


def load_molecules(path: str | Path, indices: Sequence[int] | None = None) -> list[Molecule]:
    """Molecules from a HORM-format LMDB shard (with their DFT Hessians) or any ASE-readable file.

    Args:
        path: a ``.lmdb`` shard or a directory of them (read by :class:`hip.data.HormDataset`, raw
            indices, molecules with F left out as in HIP); the reaction set's directory
            (``data/reactions``, :mod:`hip.data.reactions`: reactant, TS and product of every labelled
            reaction with their DFT Hessians, named ``"<reaction>:<role>"``); or a file ``ase.io.read``
            understands (xyz, extxyz, traj, ...; every frame is a molecule, without DFT labels).
        indices: raw shard indices or frame numbers to take, in this order (default: all; for the
            reaction set: positions in its list).

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
    if _is_reaction_set(path):
        molecules = _reaction_set_molecules(path)
        if not molecules:
            raise ValueError(f"{path}: no labelled reactions yet (scripts/label_reactions.py)")
        bad = [i for i in indices or () if not 0 <= i < len(molecules)]
        if bad:
            raise ValueError(f"{path}: indices {bad} outside its {len(molecules)} labelled molecules")
        return molecules if indices is None else [molecules[i] for i in indices]
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


def select_molecules(paths: Sequence[str | Path], indices: Sequence[int] | None = None, stride: int = 1,
                     max_molecules: int | None = None, negative_modes: int | None = None,
                     smallest_first: bool = False, report: Callable[[str], None] = print,
                     roles: Sequence[str] | None = None) -> list[Molecule]:
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
        roles: keep only reaction-set molecules of these roles (``"reactant"``, ``"ts"``, ``"product"``);
            molecules of other sources are kept. None: all.

    Raises:
        ValueError: ``stride`` < 1; ``negative_modes`` given for a molecule without a DFT Hessian (the
            message names it); nothing left.
    """
    if stride < 1:
        raise ValueError(f"stride must be ≥ 1, got {stride}")
    molecules: list[Molecule] = []
    for path in paths:
        molecules += load_molecules(path, indices)[::stride]
    if roles is not None:
        molecules = [m for m in molecules if m.role is None or m.role in roles]
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


def perturb(atoms: Atoms, rms: float, rng: np.random.Generator, min_distance: float = 0.7,
            exact: bool = False) -> Atoms:
    """A copy of ``atoms`` with Gaussian noise of per-atom RMS displacement ``rms`` Å.

    Every Cartesian coordinate gets i.i.d. noise of σ = rms/√3, so the expected mean squared atomic
    displacement is rms² (paper A.6.1: 0.5 Å). With ``exact`` the draw is then rescaled so that the
    root mean square of the atoms' displacement lengths is exactly ``rms`` (the authors' relaxation
    runs: 0.05 Å). Draws are repeated (same generator, so still seeded) until no two atoms are closer
    than ``min_distance`` Å (:func:`hip.data.labelling.displace`; checked after the rescaling).

    Raises:
        ValueError: ``rms`` < 0, or no draw in 100 keeps the atoms ``min_distance`` apart.
    """
    if rms < 0:
        raise ValueError(f"noise RMS must be ≥ 0, got {rms}")
    out = atoms.copy()
    out.calc = None
    if not exact or rms == 0:
        out.positions = displace(atoms.positions, rms / math.sqrt(3.0), rng, min_dist=min_distance)
        return out
    for _ in range(100):
        noise = rng.normal(size=atoms.positions.shape)
        noise *= rms / np.sqrt((noise**2).sum(axis=1).mean())
        moved = atoms.positions + noise
        distances = np.linalg.norm(moved[:, None] - moved[None], axis=-1)[np.triu_indices(len(atoms), 1)]
        if len(distances) == 0 or distances.min() >= min_distance:
            out.positions = moved
            return out
    raise ValueError(f"no noise draw of RMS {rms} Å in 100 keeps the atoms {min_distance} Å apart")
