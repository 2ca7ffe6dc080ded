"""A partly run reaction as plain JSON, so that a killed or failed :func:`hip.reaction.find_reaction` run
goes on from its last finished stage (``find_reaction(..., result=from_state(state))``).

JSON rather than a pickle: the file can be read back without running code from it. Each geometry is
its atomic numbers, positions (Å) and, where it has them, its energy (eV) and forces (eV/Å); the TS
Hessian (3N, 3N) eV/Å² and frequencies (cm⁻¹) are nested lists; NaN is stored as null
(:func:`hip.cli.jsonable`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from hip import kinetics
from hip.cli import jsonable
from hip.irc import with_energy
from hip.reaction import ReactionResult, StageRecord

_GEOMETRIES = ("reactant", "product", "ts")
_GEOMETRY_LISTS = ("path", "irc")


def to_state(result: ReactionResult) -> dict[str, Any]:
    """``result`` as a JSON-serialisable dict (strict JSON: no NaN), read back by :func:`from_state`."""
    state: dict[str, Any] = {
        "stages": {name: vars(record) for name, record in result.stages.items()},
        **{name: _geometry(getattr(result, name)) for name in _GEOMETRIES},
        **{name: [_geometry(a) for a in getattr(result, name)] for name in _GEOMETRY_LISTS},
        "ts_hessian": None if result.ts_hessian is None else np.asarray(result.ts_hessian).tolist(),
        "ts_frequencies": None if result.ts_frequencies is None else np.asarray(result.ts_frequencies).tolist(),
        "irc_ts_index": result.irc_ts_index,
        "energetics": None if result.energetics is None else vars(result.energetics),
    }
    return jsonable(state)


def from_state(state: dict[str, Any]) -> ReactionResult:
    """The :class:`hip.reaction.ReactionResult` that :func:`to_state` wrote.

    Raises:
        KeyError, TypeError: ``state`` is not what :func:`to_state` writes (a missing or unknown field).
    """
    energetics = state["energetics"]
    return ReactionResult(
        stages={name: StageRecord(**record) for name, record in state["stages"].items()},
        **{name: _atoms(state[name]) for name in _GEOMETRIES},
        **{name: [_atoms(a) for a in state[name]] for name in _GEOMETRY_LISTS},
        ts_hessian=_array(state["ts_hessian"]), ts_frequencies=_array(state["ts_frequencies"]),
        irc_ts_index=state["irc_ts_index"],
        energetics=None if energetics is None else kinetics.Energetics(**energetics))


def _array(values: list | None) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float64)


def _geometry(atoms: Atoms | None) -> dict[str, Any] | None:
    if atoms is None:
        return None
    results = atoms.calc.results if atoms.calc is not None else {}
    forces = results.get("forces")
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(), "energy": results.get("energy"),
            "forces": None if forces is None else np.asarray(forces).tolist()}


def _atoms(geometry: dict[str, Any] | None) -> Atoms | None:
    if geometry is None:
        return None
    atoms = Atoms(numbers=geometry["numbers"], positions=geometry["positions"])
    if geometry["energy"] is None:
        return atoms
    forces = None if geometry["forces"] is None else np.asarray(geometry["forces"])
    return with_energy(atoms, geometry["energy"], forces)
