"""Mass weighting, Eckart projection and harmonic frequencies (paper §2.3 and appendix A.6, eq. 46–56).

Everything here works on one molecule and computes in float64 (inputs are converted, outputs are
float64 on the input's device). Units: positions Å, masses amu, Cartesian Hessians eV/Å²,
mass-weighted Hessians and their eigenvalues eV/(Å²·amu), frequencies cm⁻¹.

The rigid-body (translation and rotation) subspace is spanned by the Eckart vectors; for a Hessian of
a translation- and rotation-invariant energy at a stationary point the mass-weighted Hessian
annihilates it, and elsewhere the projection removes the residual coupling. Vibrational modes are the
eigenpairs of the mass-weighted Hessian restricted to the orthogonal complement of that subspace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import ase.data
import ase.units
import torch

# Wavenumber of a mass-weighted eigenvalue. In ase.units, length is Å, energy eV and mass amu
# (ase.units.kg = 1/_amu), so the time unit is Å·sqrt(amu/eV), and ase.units.s = 1e10·sqrt(_e/_amu) is
# the number of those time units in one second. An eigenvalue λ of the mass-weighted Hessian, in
# eV/(Å²·amu), is ω² in (time unit)⁻²; hence ω [rad/s] = sqrt(λ)·ase.units.s, and the wavenumber is
# ν̃ = ω / (2π·c) with c = 100·_c in cm/s. Numerically ≈ 521.47 cm⁻¹ per sqrt(eV/(Å²·amu)).
#: cm⁻¹ per sqrt(eV/(Å²·amu)): ν̃ = sign(λ)·sqrt(|λ|)·this.
EV_PER_A2_AMU_TO_CM1 = ase.units.s / (2.0 * math.pi * 100.0 * ase.units._c)

#: A rotation vector whose norm is below this fraction of the largest one is dropped (linear molecule).
ROTATION_NORM_TOL = 1e-5

_ArrayLike = torch.Tensor | Sequence


class VibrationalModes(NamedTuple):
    """Vibrational analysis of one molecule with the rigid-body modes removed (ascending order).

    Attributes:
        eigenvalues: [3N − d] eigenvalues of the Eckart-projected mass-weighted Hessian, eV/(Å²·amu);
            d = 6 (5 for a linear molecule, 3 for one atom) rigid-body modes are excluded.
        eigenvectors: [3N, 3N − d] matching orthonormal columns in mass-weighted Cartesian coordinates
            (index 3·atom + xyz), orthogonal to every Eckart vector.
        frequencies: [3N − d] harmonic wavenumbers, cm⁻¹; negative for imaginary modes (λ < 0).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    frequencies: torch.Tensor


def _f64(x: _ArrayLike, device: torch.device | None = None) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device=device)


def _square_hessian(hessian: _ArrayLike, natoms: int) -> torch.Tensor:
    h = _f64(hessian)
    if h.ndim == 1 and h.numel() == 9 * natoms * natoms:
        h = h.view(3 * natoms, 3 * natoms)
    if h.shape != (3 * natoms, 3 * natoms):
        raise ValueError(f"hessian has shape {tuple(h.shape)}; {natoms} atoms need "
                         f"({3 * natoms}, {3 * natoms}) or [{9 * natoms * natoms}]")
    return h


def atomic_masses(z: _ArrayLike) -> torch.Tensor:
    """Standard atomic masses from ``ase.data.atomic_masses`` (IUPAC weights; H = 1.008).

    Args:
        z: [N] atomic numbers.

    Returns:
        [N] float64 masses, amu, on ``z``'s device.

    Raises:
        ValueError: for an atomic number outside 1…118.
    """
    z = torch.as_tensor(z)
    table = torch.as_tensor(ase.data.atomic_masses, dtype=torch.float64)
    bad = (z < 1) | (z >= len(table))
    if bad.any():
        raise ValueError(f"atomic numbers {sorted(set(z[bad].tolist()))} have no mass")
    return table[z.long().cpu()].to(z.device)


def mass_weight(hessian: _ArrayLike, masses: _ArrayLike) -> torch.Tensor:
    """Mass-weighted Hessian H̃ = M^{-1/2} H M^{-1/2}, paper eq. 47–48.

    Args:
        hessian: (3N, 3N) Cartesian Hessian, eV/Å² (or a flat [9N²] one).
        masses: [N] atomic masses, amu.

    Returns:
        (3N, 3N) float64, eV/(Å²·amu).

    Raises:
        ValueError: if the shapes disagree.
    """
    m = _f64(masses)
    h = _square_hessian(hessian, m.numel()).to(m.device)
    inv_sqrt = m.rsqrt().repeat_interleave(3)
    return h * inv_sqrt[:, None] * inv_sqrt[None, :]


def eckart_vectors(pos: _ArrayLike, masses: _ArrayLike, rot_tol: float = ROTATION_NORM_TOL) -> torch.Tensor:
    """Orthonormal basis of the rigid-body subspace in mass-weighted coordinates, paper eq. 46–53.

    Positions are centred at the centre of mass (eq. 46); translations are t_a = √m_i e_a (eq. 51);
    rotations are r_k = √m_i (i_k × r_i) about the principal axes i_k of the inertia tensor (eq. 49–50,
    52). The squared norm of r_k is the principal moment I_k, so a rotation whose norm is below
    ``rot_tol`` times the largest is dropped (one for a linear molecule, all three for an atom). The
    remaining rows are orthonormalised with a QR factorisation.

    Args:
        pos: [N, 3] positions, Å.
        masses: [N] masses, amu.
        rot_tol: relative norm threshold for dropping a rotation vector.

    Returns:
        U: [d, 3N] float64 with orthonormal rows (d = 6, 5 for linear molecules, 3 for one atom).

    Raises:
        ValueError: if the shapes disagree.
    """
    pos = _f64(pos)
    m = _f64(masses, device=pos.device)
    if pos.ndim != 2 or pos.shape[1] != 3 or m.shape != pos.shape[:1]:
        raise ValueError(f"pos has shape {tuple(pos.shape)} and masses {tuple(m.shape)}; "
                         "expected [N, 3] and [N]")
    n = pos.shape[0]
    r = pos - (m[:, None] * pos).sum(0) / m.sum()
    eye = torch.eye(3, dtype=torch.float64, device=pos.device)
    inertia = (m * (r * r).sum(1)).sum() * eye - torch.einsum("i,ia,ib->ab", m, r, r)
    _, axes = torch.linalg.eigh(inertia)  # columns: principal axes i_k
    sqrt_m = m.sqrt()[None, :, None]
    translations = sqrt_m * eye[:, None, :].expand(3, n, 3)  # [a, i, xyz]
    rotations = sqrt_m * torch.linalg.cross(axes.T[:, None, :].expand(3, n, 3), r.expand(3, n, 3), dim=-1)
    norms = rotations.flatten(1).norm(dim=1)
    keep = norms > rot_tol * norms.max()
    rows = torch.cat([translations, rotations[keep]]).reshape(-1, 3 * n)
    q, _ = torch.linalg.qr(rows.T)
    return q.T


def eckart_projector(pos: _ArrayLike, masses: _ArrayLike, rot_tol: float = ROTATION_NORM_TOL) -> torch.Tensor:
    """Eckart projector P = I − UᵀU onto the vibrational subspace, paper eq. 54.

    Args:
        pos: [N, 3] positions, Å.
        masses: [N] masses, amu.
        rot_tol: see :func:`eckart_vectors`.

    Returns:
        (3N, 3N) float64 symmetric idempotent projector acting on mass-weighted coordinates.
    """
    u = eckart_vectors(pos, masses, rot_tol)
    return torch.eye(u.shape[1], dtype=u.dtype, device=u.device) - u.T @ u


def _masses_for(z: _ArrayLike, masses: _ArrayLike | None, device: torch.device) -> torch.Tensor:
    return (atomic_masses(z) if masses is None else _f64(masses)).to(device)


def eckart_project(
    hessian: _ArrayLike,
    pos: _ArrayLike,
    z: _ArrayLike,
    masses: _ArrayLike | None = None,
) -> torch.Tensor:
    """Eckart-projected mass-weighted Hessian P H̃ P, symmetrised (paper eq. 55–56).

    Args:
        hessian: (3N, 3N) Cartesian Hessian, eV/Å² (or flat [9N²]).
        pos: [N, 3] positions, Å.
        z: [N] atomic numbers (for the masses).
        masses: [N] masses, amu, overriding ``atomic_masses(z)``.

    Returns:
        (3N, 3N) float64, eV/(Å²·amu); it has d exact rigid-body null vectors (6, 5 if linear).
    """
    pos = _f64(pos)
    m = _masses_for(z, masses, pos.device)
    h = mass_weight(hessian, m).to(pos.device)
    p = eckart_projector(pos, m)
    projected = p @ h @ p
    return 0.5 * (projected + projected.T)


def vibrational_analysis(
    hessian: _ArrayLike,
    pos: _ArrayLike,
    z: _ArrayLike,
    masses: _ArrayLike | None = None,
) -> VibrationalModes:
    """Vibrational eigenpairs and harmonic frequencies with the rigid-body modes removed (paper A.6).

    The mass-weighted Hessian (symmetrised) is diagonalised in an orthonormal basis B of the
    complement of the Eckart vectors U (from a complete QR of Uᵀ), i.e. λ, W = eigh(Bᵀ H̃ B) and the
    modes are B W. The d removed modes are thus the null space of P, identified by geometry, never by
    eigenvalue magnitude; this equals the non-null spectrum of P H̃ P.

    Args:
        hessian: (3N, 3N) Cartesian Hessian, eV/Å² (or flat [9N²]).
        pos: [N, 3] positions, Å.
        z: [N] atomic numbers (for the masses).
        masses: [N] masses, amu, overriding ``atomic_masses(z)``.

    Returns:
        :class:`VibrationalModes` (eigenvalues eV/(Å²·amu), mass-weighted eigenvectors, frequencies
        cm⁻¹ with negative values for imaginary modes), ascending.
    """
    pos = _f64(pos)
    m = _masses_for(z, masses, pos.device)
    h = mass_weight(hessian, m).to(pos.device)
    h = 0.5 * (h + h.T)
    u = eckart_vectors(pos, m)
    q, _ = torch.linalg.qr(u.T, mode="complete")
    basis = q[:, u.shape[0]:]  # [3N, 3N − d], orthonormal complement of the rigid-body subspace
    evals, evecs = torch.linalg.eigh(basis.T @ h @ basis)
    frequencies = evals.sign() * evals.abs().sqrt() * EV_PER_A2_AMU_TO_CM1
    return VibrationalModes(evals, basis @ evecs, frequencies)
