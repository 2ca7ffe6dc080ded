"""Files for quantum-chemistry programs: ORCA ``.hess``, Gaussian formatted checkpoint, Molden normal modes.

For one molecule (atomic numbers, positions Å, Cartesian Hessian eV/Å², optionally energy eV and forces
eV/Å) this writes what a chemist needs to go on elsewhere: seed a DFT transition-state search or IRC with
a good Hessian (ORCA ``%geom InHess Read InHessName "x.hess" end``; Gaussian ``opt=(ts,rcfc)`` from a
checkpoint), or look at the modes in Molden, Avogadro or Jmol. :func:`write_formats` is the one entry
point (``hess``, ``fchk``, ``molden``); every unit conversion comes from :mod:`hip.constants`, and the
frequencies and modes from :func:`hip.vibrations.vibrational_analysis` (mass weighting, Eckart projection).

Sources followed:

- ORCA ``.hess``: the ORCA manual (6.0 §7.27 "Frequency calculations - numerical and analytical", 6.1 §4.7
  "Vibrational Frequencies" and §5.18 "Vibrational Spectroscopy", faccts.de/docs/orca): the Hessian file of
  a frequency run, its ``3N`` frequencies whose first 6 (5 for a linear molecule) are the projected-out
  rigid-body modes printed as exactly 0, then the vibrations in ascending order, imaginary ones negative;
  the normal modes, as ORCA's output heads them, are "the Cartesian displacements weighted by the diagonal
  matrix M(i,i)=1/sqrt(m[i]) ... normalized but *not* orthogonal", with zero columns for the rigid-body
  modes. The manual does not print the file's grammar; the block layout (a ``$name`` line, the
  dimension(s), then columns in blocks of 5, each block headed by its column indices and each row by its
  0-based row index; ``$atoms`` as symbol, mass in amu and coordinates in Bohr) is the one ORCA writes
  and its own ``orca_vib``/``orca_mapspc`` read.
- Gaussian formatted checkpoint: written by qc-iodata (``iodata.formats.fchk``), which follows Gaussian's
  formchk layout: "Cartesian Force Constants" is the lower triangle of the Hessian row by row
  (H11, H21, H22, H31, ...) in Hartree/Bohr², "Cartesian Gradient" is dE/dx in Hartree/Bohr (minus the
  forces), "Current cartesian coordinates" in Bohr, "Total Energy" in Hartree. Gaussian itself reads a
  binary ``.chk``; ``unfchk`` converts (not checked here: Gaussian is not available to the project).
- Molden: "The Molden Format" (www.theochem.ru.nl/molden/molden_format.html): ``[Molden Format]``,
  ``[Atoms] AU`` (name, number, atomic number, x y z in Bohr), and the vibration sections ``[FREQ]``
  (cm⁻¹, imaginary negative), ``[FR-COORD]`` (name, x y z in Bohr) and ``[FR-NORM-COORD]`` (``vibration k``
  then one ``dx dy dz`` line per atom). Only the 3N − 6 (3N − 5) vibrations are listed, as the same
  normalised Cartesian displacements as in the ``.hess`` file.

Each mode's sign is fixed (its largest-magnitude component, the first of equal ones, is positive), so the
same input gives the same files. Files are written to a temporary name and renamed, so an interrupted
run never leaves a truncated file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import ase.data
import numpy as np
import torch

from hip.cli import atomic_write_text
from hip.constants import (
    BOHR_TO_ANGSTROM,
    HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2,
    HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    HARTREE_TO_EV,
)
from hip.vibrations import atomic_masses, vibrational_analysis

#: The names :func:`write_formats` accepts and the file suffix each writes.
FORMATS: dict[str, str] = {"hess": ".hess", "fchk": ".fchk", "molden": ".molden"}

#: Columns per block in ORCA's ``$hessian`` and ``$normal_modes``.
ORCA_COLUMNS = 5

_TITLE = "HIP-EquiformerV2 prediction"


class Molecule(NamedTuple):
    """One checked molecule, float64 NumPy, in hip's units (see :func:`check_molecule`)."""

    numbers: np.ndarray  # (N,) int
    positions: np.ndarray  # (N, 3) Å
    hessian: np.ndarray  # (3N, 3N) eV/Å², symmetric
    masses: np.ndarray  # (N,) amu
    energy: float | None  # eV
    forces: np.ndarray | None  # (N, 3) eV/Å


class NormalModes(NamedTuple):
    """All 3N entries in ORCA's convention (see :func:`normal_modes`)."""

    frequencies: np.ndarray  # (3N,) cm⁻¹: d zeros, then the vibrations ascending (imaginary negative)
    modes: np.ndarray  # (3N, 3N) columns: normalised Cartesian displacements; the first d are zero
    n_rigid: int  # d = 6, 5 for a linear molecule, 3 for one atom


def _numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not a numeric array ({e})") from None


def _finite(a: np.ndarray, name: str) -> np.ndarray:
    bad = ~np.isfinite(a)
    if bad.any():
        where = f", the first at index {[int(i) for i in np.argwhere(bad)[0]]}" if a.ndim else ""
        raise ValueError(f"{name} has {int(bad.sum())} non-finite entries (NaN or inf){where}")
    return a


def check_molecule(numbers, positions, hessian, energy=None, forces=None, masses=None) -> Molecule:
    """Check and convert one molecule's inputs (NumPy arrays, sequences or tensors on any device).

    Args:
        numbers: (N,) atomic numbers.
        positions: (N, 3) positions, Å.
        hessian: (3N, 3N) Cartesian Hessian, eV/Å² (or flat [9N²]); kept symmetrised, ½(H + Hᵀ), as
            :func:`hip.vibrations.vibrational_analysis` uses it and as the fchk's lower triangle stores it.
        energy: total energy, eV, or None.
        forces: (N, 3) forces −dE/dx, eV/Å, or None.
        masses: (N,) masses, amu; default :func:`hip.vibrations.atomic_masses`.

    Returns:
        :class:`Molecule`.

    Raises:
        ValueError: a wrong shape, a non-integer or unknown atomic number, or a NaN/inf entry; the message
            names the field (and the first bad index).
    """
    z = _numpy(numbers, "atomic numbers")
    if z.ndim != 1 or z.size == 0 or (z != np.round(z)).any():
        raise ValueError(f"atomic numbers must be a non-empty 1-D array of integers, got shape {z.shape}")
    z = z.astype(np.int64)
    n = z.size
    pos = _finite(_numpy(positions, "positions"), "positions")
    if pos.shape != (n, 3):
        raise ValueError(f"positions have shape {pos.shape}; {n} atoms need ({n}, 3)")
    h = _numpy(hessian, "hessian")
    if h.ndim == 1 and h.size == 9 * n * n:
        h = h.reshape(3 * n, 3 * n)
    if h.shape != (3 * n, 3 * n):
        raise ValueError(f"hessian has shape {h.shape}; {n} atoms need ({3 * n}, {3 * n}) or [{9 * n * n}]")
    _finite(h, "hessian")
    h = 0.5 * (h + h.T)
    m = atomic_masses(torch.as_tensor(z)).numpy() if masses is None else _numpy(masses, "masses")
    if m.shape != (n,) or not (np.isfinite(m) & (m > 0)).all():
        raise ValueError(f"masses must be {n} positive finite numbers (amu), got shape {m.shape}")
    f = None
    if forces is not None:
        f = _finite(_numpy(forces, "forces"), "forces")
        if f.shape != (n, 3):
            raise ValueError(f"forces have shape {f.shape}; {n} atoms need ({n}, 3)")
    e = None
    if energy is not None:
        e = _finite(_numpy(energy, "energy"), "energy")
        if e.size != 1:
            raise ValueError(f"energy must be one number (eV), got shape {e.shape}")
        e = float(e.reshape(()))
    return Molecule(z, pos, h, m, e, f)


def normal_modes(mol: Molecule) -> NormalModes:
    """Frequencies and normal modes in ORCA's convention, from :func:`hip.vibrations.vibrational_analysis`.

    The d rigid-body entries come first with frequency 0 and zero mode vectors; then the 3N − d
    vibrations in ascending order (imaginary ones as negative wavenumbers). A mode's column is its
    mass-weighted eigenvector L scaled by M^{-1/2} (Cartesian displacements) and normalised to unit length
    (ORCA manual: "normalized but *not* orthogonal"), with its largest component positive.

    Args:
        mol: from :func:`check_molecule`.

    Returns:
        :class:`NormalModes`: frequencies (3N,) cm⁻¹, modes (3N, 3N), n_rigid d.
    """
    vib = vibrational_analysis(mol.hessian, mol.positions, mol.numbers, masses=mol.masses)
    n3 = 3 * len(mol.numbers)
    d = n3 - len(vib.frequencies)
    frequencies = np.zeros(n3)
    frequencies[d:] = vib.frequencies.cpu().numpy()
    cart = vib.eigenvectors.cpu().numpy() / np.sqrt(np.repeat(mol.masses, 3))[:, None]
    cart /= np.linalg.norm(cart, axis=0, keepdims=True)
    largest = np.argmax(np.round(np.abs(cart), 10), axis=0)  # rounding: the first of equal magnitudes
    cart *= np.sign(cart[largest, np.arange(cart.shape[1])])
    modes = np.zeros((n3, n3))
    modes[:, d:] = cart
    return NormalModes(frequencies, modes, d)


def _symbols(mol: Molecule) -> list[str]:
    return [ase.data.chemical_symbols[int(z)] for z in mol.numbers]


# ---- ORCA .hess --------------------------------------------------------------------------------------------
def _orca_blocks(matrix: np.ndarray) -> list[str]:
    """ORCA's column blocks: ORCA_COLUMNS columns per block, a header of column indices, indexed rows."""
    lines = []
    for start in range(0, matrix.shape[1], ORCA_COLUMNS):
        cols = range(start, min(start + ORCA_COLUMNS, matrix.shape[1]))
        lines.append(" " * 11 + "".join(f"{c:>19d}" for c in cols))
        lines += [f"{i:7d}    " + "".join(f"{matrix[i, c]:19.10E}" for c in cols) for i in range(matrix.shape[0])]
    return lines


def orca_hess_text(mol: Molecule, modes: NormalModes) -> str:
    """The text of an ORCA ``.hess`` file (sources in the module docstring).

    Blocks: ``$orca_hessian_file``; ``$act_atom`` N − 1 and ``$act_coord`` 2 (the last displaced atom and
    coordinate, 0-based, of ORCA's numerical-frequency restart bookkeeping: every displacement is done);
    ``$act_energy`` (Hartree; left out when no energy is given); ``$hessian`` (3N, then the matrix in
    Hartree/Bohr²); ``$vibrational_frequencies`` (3N rows ``k  ν̃`` in cm⁻¹); ``$normal_modes`` (``3N 3N``,
    then the columns of ``modes.modes``); ``$atoms`` (N rows: symbol, mass amu, x y z Bohr); ``$end``.

    Args:
        mol: from :func:`check_molecule`.
        modes: from :func:`normal_modes` of the same molecule.
    """
    n = len(mol.numbers)
    n3 = 3 * n
    lines = ["", "$orca_hessian_file", "", "$act_atom", f"  {n - 1}", "", "$act_coord", "  2", ""]
    if mol.energy is not None:
        lines += ["$act_energy", f"  {mol.energy / HARTREE_TO_EV:20.12f}", ""]
    lines += ["$hessian", f"{n3}", *_orca_blocks(mol.hessian / HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2), ""]
    lines += ["$vibrational_frequencies", f"{n3}"]
    lines += [f"{k:5d}   {f:16.6f}" for k, f in enumerate(modes.frequencies)] + [""]
    lines += ["$normal_modes", f"{n3} {n3}", *_orca_blocks(modes.modes), ""]
    lines += ["#", "# The atoms: label  mass x y z (in bohrs)", "#", "$atoms", f"{n}"]
    bohr = mol.positions / BOHR_TO_ANGSTROM
    lines += [f" {s:<2s} {m:12.5f} {x:20.12f} {y:20.12f} {z:20.12f}"
              for s, m, (x, y, z) in zip(_symbols(mol), mol.masses, bohr, strict=True)]
    lines += ["", "$end", ""]
    return "\n".join(lines)


# ---- Molden ------------------------------------------------------------------------------------------------
def molden_text(mol: Molecule, modes: NormalModes) -> str:
    """The text of a Molden normal-mode file (The Molden Format; module docstring).

    Sections: ``[Molden Format]``, ``[Atoms] AU`` (Bohr), ``[FREQ]`` (the 3N − d vibrational wavenumbers,
    cm⁻¹, imaginary negative), ``[FR-COORD]`` (Bohr), ``[FR-NORM-COORD]`` (``vibration k`` and N rows
    ``dx dy dz``: the normalised Cartesian displacements of :func:`normal_modes`). A single atom has no
    vibrations: the three vibration sections are then empty.

    Args:
        mol: from :func:`check_molecule`.
        modes: from :func:`normal_modes` of the same molecule.
    """
    symbols = _symbols(mol)
    bohr = mol.positions / BOHR_TO_ANGSTROM
    lines = ["[Molden Format]", "[Atoms] AU"]
    lines += [f"{s:<2s} {i:5d} {z:4d} {x:20.12f} {y:20.12f} {w:20.12f}"
              for i, (s, z, (x, y, w)) in enumerate(zip(symbols, mol.numbers, bohr, strict=True), start=1)]
    lines += ["[FREQ]", *(f"{f:16.6f}" for f in modes.frequencies[modes.n_rigid:])]
    lines += ["[FR-COORD]", *(f"{s:<2s} {x:20.12f} {y:20.12f} {w:20.12f}"
                              for s, (x, y, w) in zip(symbols, bohr, strict=True))]
    lines.append("[FR-NORM-COORD]")
    for k in range(modes.n_rigid, modes.modes.shape[1]):
        lines.append(f" vibration {k - modes.n_rigid + 1:5d}")
        lines += [f"{dx:16.10f} {dy:16.10f} {dz:16.10f}" for dx, dy, dz in modes.modes[:, k].reshape(-1, 3)]
    return "\n".join(lines) + "\n"


# ---- Gaussian formatted checkpoint (qc-iodata) -------------------------------------------------------------
def write_fchk(path: str | Path, mol: Molecule, title: str = _TITLE, charge: int = 0) -> Path:
    """Write a Gaussian formatted checkpoint with qc-iodata's fchk writer (format in the module docstring).

    Fields: "Atomic numbers", "Nuclear charges", "Current cartesian coordinates" (Bohr), "Integer/Real
    atomic weights" (amu), "Charge", "Number of electrons" (ΣZ − charge), "Cartesian Force
    Constants" (lower triangle, Hartree/Bohr²), and when given "Total Energy"/"SCF Energy" (Hartree) and
    "Cartesian Gradient" (−forces, Hartree/Bohr). Run type ``FREQ``, level of theory ``HIP``.

    Args:
        path: the file to write.
        mol: from :func:`check_molecule`.
        title: the first line (at most 72 characters are kept).
        charge: net charge of the molecule, e.

    Returns:
        ``path``.
    """
    from iodata import IOData
    from iodata.formats.fchk import dump_one  # see below: iodata.dump_one refuses a file without orbitals
    from iodata.utils import amu  # iodata stores masses in electron masses; amu is its conversion

    path = Path(path)
    data = IOData(
        title=title[:72], run_type="freq", lot="HIP", charge=charge,
        atnums=mol.numbers, atcoords=mol.positions / BOHR_TO_ANGSTROM, atmasses=mol.masses * amu,
        athessian=mol.hessian / HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2,
        energy=None if mol.energy is None else mol.energy / HARTREE_TO_EV,
        atgradient=None if mol.forces is None else -mol.forces / HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    )
    # qc-iodata 1.0's iodata.dump_one first runs the fchk module's prepare_dump, which demands an orbital
    # basis set (prepare_segmented) even when, as here, there are no orbitals to prepare; the format
    # writer itself handles a molecule without orbitals, so it is called directly.
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        dump_one(f, data)
    os.replace(tmp, path)
    return path


# ---- the dispatcher ------------------------------------------------------------------------------------------
def check_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """The requested format names, checked, duplicates dropped, order kept (a single string is one name).

    Raises:
        ValueError: an unknown name; the message lists the allowed ones.
    """
    names = [formats] if isinstance(formats, str) else list(formats)
    unknown = [f for f in names if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown output format(s) {', '.join(repr(f) for f in unknown)}; "
                         f"allowed: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))


def write_formats(
    directory: str | Path,
    stem: str,
    formats: str | Sequence[str],
    numbers,
    positions,
    hessian,
    *,
    energy: float | None = None,
    forces=None,
    masses=None,
    title: str = _TITLE,
    charge: int = 0,
) -> list[Path]:
    """Write one molecule in each requested format as ``directory/stem.<suffix>`` (:data:`FORMATS`).

    Everything is checked before any file is written; the vibrational analysis runs once and serves
    ``hess`` and ``molden``.

    Args:
        directory: created if missing.
        stem: file name without suffix, e.g. ``"frame_000042"``.
        formats: names out of :data:`FORMATS` (``hess``, ``fchk``, ``molden``).
        numbers: (N,) atomic numbers.
        positions: (N, 3) positions, Å.
        hessian: (3N, 3N) Cartesian Hessian, eV/Å² (or flat [9N²]).
        energy: total energy, eV (ORCA ``$act_energy``, fchk "Total Energy"), or None.
        forces: (N, 3) forces, eV/Å (fchk "Cartesian Gradient"), or None.
        masses: (N,) masses, amu; default :func:`hip.vibrations.atomic_masses`.
        title: the fchk title line.
        charge: net charge, e (fchk "Charge" and "Number of electrons"; HORM molecules are neutral).

    Returns:
        The written paths, in the order of ``formats``.

    Raises:
        ValueError: an unknown format name (the message lists the allowed ones), or invalid molecule data
            (see :func:`check_molecule`).
    """
    names = check_formats(formats)
    mol = check_molecule(numbers, positions, hessian, energy, forces, masses)
    modes = normal_modes(mol) if {"hess", "molden"} & set(names) else None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = directory / f"{stem}{FORMATS[name]}"
        if name == "hess":
            paths.append(atomic_write_text(path, orca_hess_text(mol, modes)))
        elif name == "molden":
            paths.append(atomic_write_text(path, molden_text(mol, modes)))
        else:
            paths.append(write_fchk(path, mol, title, charge))
    return paths
