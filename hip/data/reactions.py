"""The embedded DFT reaction set (``data/reactions/``, data card ``data/reactions/README.md``).

Small closed-shell H/C/N/O reactions from Baker's transition-state test set (Baker & Chan 1996) and
other classic small-molecule examples, each with its reactant, transition state (TS) and product optimised with
PySCF at ωB97X/6-31G(d) by :func:`hip.reaction.find_reaction` (``scripts/label_reactions.py``), and
the DFT energy, forces and Hessian at all three. Files per reaction ``name``:

* ``guesses/<name>.xyz``: the hand-built reactant and product guesses (two frames, the same atom order);
* ``<name>.json``: the pipeline's record (``hip.reaction.ReactionResult.as_dict``: stages, barriers,
  rates) and the level of theory; written whether or not the reaction was found;
* ``<name>.extxyz``: three frames, reactant, TS and product (``info["role"]``), each with the DFT
  ``energy`` (eV) and ``forces`` (eV/Å) and the per-atom array ``hessian`` [N, 9N] (rows 3i..3i+2 of
  the (3N, 3N) Hessian in eV/Å²); written only for a reaction whose every stage succeeded.

Units: Å, eV, eV/Å, eV/Å², cm⁻¹, K.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

#: ``data/reactions`` of this checkout.
REACTION_SET_DIR = Path(__file__).resolve().parents[2] / "data" / "reactions"
#: The reactions, smallest first (labelling order): name → (reaction, where it comes from). "Baker": J. Baker
#: and F. Chan, J. Comput. Chem. 17, 888 (1996), the 25-TS test set; "classic": a textbook small-molecule TS.
REACTIONS: dict[str, tuple[str, str]] = {
    "hcn_hnc": ("HCN → HNC", "Baker"),
    "hono_cis_trans": ("cis-HONO → trans-HONO", "classic (torsion)"),
    "hcch_h2cc": ("HC≡CH → H₂C=C:", "Baker"),
    "h2co_h2_co": ("H₂CO → H₂ + CO", "Baker"),
    "h2cnh_hcnh2": ("H₂C=NH → HC̈–NH₂", "Baker"),
    "hcnh2_hcn_h2": ("HC̈–NH₂ → HCN + H₂", "Baker"),
    "hcooh_co_h2o": ("HCOOH → CO + H₂O", "classic"),
    "ch3nc_ch3cn": ("CH₃NC → CH₃CN", "classic (measured rate)"),
    "vinyl_alcohol_acetaldehyde": ("CH₂=CHOH → CH₃CHO", "Baker"),
}
ROLES = ("reactant", "ts", "product")


@dataclass
class LabelledReaction:
    """One reaction of the set: ``reactant``, ``ts``, ``product`` (Atoms with their DFT energy eV and
    forces eV/Å), ``hessians`` (role → (3N, 3N) eV/Å²) and ``summary`` (``<name>.json``)."""

    name: str
    reactant: Atoms
    ts: Atoms
    product: Atoms
    hessians: dict[str, np.ndarray]
    summary: dict[str, Any]

    @property
    def description(self) -> str:
        return REACTIONS.get(self.name, (self.name, ""))[0]


def guess_pair(name: str, directory: str | os.PathLike = REACTION_SET_DIR) -> tuple[Atoms, Atoms]:
    """The reactant and product guesses of reaction ``name`` (``guesses/<name>.xyz``, frames 1 and 2).

    Raises:
        FileNotFoundError: no such guess file; ValueError: it does not hold two or three frames.
    """
    frames = _guess_frames(name, directory)
    return frames[0], frames[1]


def ts_guess(name: str, directory: str | os.PathLike = REACTION_SET_DIR) -> Atoms | None:
    """The optional third frame of ``guesses/<name>.xyz``: a TS guess that the TS search starts from instead
    of the path's highest image (for reactions whose interpolated path misses the saddle), or None."""
    frames = _guess_frames(name, directory)
    return frames[2] if len(frames) == 3 else None


def _guess_frames(name: str, directory: str | os.PathLike) -> list[Atoms]:
    import ase.io

    path = Path(directory) / "guesses" / f"{name}.xyz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no guesses for reaction {name!r} (known: {', '.join(REACTIONS)})")
    frames = ase.io.read(path, index=":")
    if len(frames) not in (2, 3):
        raise ValueError(f"{path}: {len(frames)} frames; expected the reactant, the product and optionally a TS guess")
    return frames


def stationary_frame(atoms: Atoms, role: str, name: str, energy: float, forces: np.ndarray,
                     hessian: np.ndarray) -> Atoms:
    """``atoms`` as one frame of ``<name>.extxyz`` (module docstring)."""
    n = len(atoms)
    hessian = np.asarray(hessian, dtype=np.float64)
    if hessian.shape != (3 * n, 3 * n):
        raise ValueError(f"{name} {role}: Hessian has shape {hessian.shape}, expected ({3 * n}, {3 * n})")
    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    frame.info.update(role=role, reaction=name)
    frame.arrays["hessian"] = hessian.reshape(n, 9 * n)
    frame.calc = SinglePointCalculator(frame, energy=float(energy), forces=np.asarray(forces, dtype=np.float64))
    return frame


def load_reaction(name: str, directory: str | os.PathLike = REACTION_SET_DIR) -> LabelledReaction:
    """Reaction ``name`` of the labelled set in ``directory``.

    Raises:
        FileNotFoundError: ``<name>.json`` or ``<name>.extxyz`` missing (not labelled, or its labelling failed:
            the json says at which stage).
        ValueError: the extxyz file does not hold the three roles with energies, forces and Hessians.
    """
    import ase.io

    directory = Path(directory)
    record, structures = directory / f"{name}.json", directory / f"{name}.extxyz"
    if not record.is_file():
        raise FileNotFoundError(f"{record}: reaction {name!r} is not labelled (scripts/label_reactions.py)")
    summary = json.loads(record.read_text())
    if not structures.is_file():
        raise FileNotFoundError(f"{structures}: reaction {name!r} has no labelled structures (its labelling "
                                f"stopped at stage {summary.get('failed_stage')!r}, see {record})")
    frames = ase.io.read(structures, index=":")
    roles = [f.info.get("role") for f in frames]
    if roles != list(ROLES):
        raise ValueError(f"{structures}: frames have roles {roles}, expected {list(ROLES)} (field 'role')")
    hessians = {}
    for frame, role in zip(frames, ROLES, strict=True):
        n = len(frame)
        if "hessian" not in frame.arrays or frame.calc is None:
            raise ValueError(f"{structures}: frame {role} lacks the energy, forces or 'hessian' array")
        hessians[role] = frame.arrays.pop("hessian").reshape(3 * n, 3 * n)
    return LabelledReaction(name, *frames, hessians=hessians, summary=summary)


def load_reaction_set(directory: str | os.PathLike = REACTION_SET_DIR) -> list[LabelledReaction]:
    """Every reaction of :data:`REACTIONS` with labelled structures in ``directory``, in labelling order
    (those whose labelling failed or has not run are left out: ``missing_reactions`` names them)."""
    directory = Path(directory)
    return [load_reaction(name, directory) for name in REACTIONS if (directory / f"{name}.extxyz").is_file()]


def missing_reactions(directory: str | os.PathLike = REACTION_SET_DIR) -> list[str]:
    """Names of :data:`REACTIONS` without labelled structures in ``directory``."""
    return [name for name in REACTIONS if not (Path(directory) / f"{name}.extxyz").is_file()]


def energetics(reaction: LabelledReaction, temperature: float = 298.15, pressure: float = 101325.0):
    """:class:`hip.kinetics.Energetics` (barriers eV, Wigner-corrected Eyring rates s⁻¹) of ``reaction`` at
    ``temperature`` K from its stored DFT energies and Hessians: what ``react.py calculator=dft`` computes
    there, at any temperature. For a dissociation the product is the loose complex the IRC reached.
    """
    from hip import kinetics
    from hip.vibrations import vibrational_analysis

    points = {role: kinetics.stationary_point(getattr(reaction, role), reaction.hessians[role],
                                              getattr(reaction, role).get_potential_energy(), temperature, pressure)
              for role in ROLES}
    ts = reaction.ts
    nu = vibrational_analysis(reaction.hessians["ts"], ts.positions, ts.numbers).frequencies
    return kinetics.reaction_energetics(points["reactant"], points["ts"], points["product"], float(nu[0]),
                                        temperature)
