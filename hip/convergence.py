"""Gaussian-style convergence criteria of geometry optimisations (paper A.6.4, Table 13).

The four quantities Gaussian checks after every step (largest and RMS force component, largest and RMS
step component), stated as in Gaussian and the paper in Hartree/Bohr (forces) and Bohr (steps); inputs
are in hip's units (eV/Å, Å). Used by :func:`hip.optimize.optimize` and :func:`hip.irc.irc_verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from hip.constants import BOHR_TO_ANGSTROM, HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM


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
        f = remove_rigid_body(forces, positions) / HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM
        s = remove_rigid_body(step, positions) / BOHR_TO_ANGSTROM
        values = (float(np.abs(f).max()), float(np.sqrt((f**2).mean())),
                  float(np.abs(s).max()), float(np.sqrt((s**2).mean())))
        limits = (self.max_force, self.rms_force, self.max_step, self.rms_step)
        return Convergence(*values, all(v < lim for v, lim in zip(values, limits, strict=True)))

    def fmax_ev_per_a(self) -> float:
        """``max_force`` in eV/Å (for optimisers that take an ASE ``fmax``)."""
        return self.max_force * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM


#: Gaussian's criteria (paper Table 13): "default" for relaxations and TS search, "tight" for ZPE.
GAUSSIAN_CRITERIA: dict[str, ConvergenceCriteria] = {
    "loose": ConvergenceCriteria("loose", 2.5e-3, 1.7e-3, 1.0e-2, 6.7e-3),
    "default": ConvergenceCriteria("default", 4.5e-4, 3.0e-4, 1.8e-3, 1.2e-3),
    "tight": ConvergenceCriteria("tight", 1.5e-5, 1.0e-5, 6.0e-5, 4.0e-5),
    "verytight": ConvergenceCriteria("verytight", 2.0e-6, 1.0e-6, 6.0e-6, 4.0e-6),
}
