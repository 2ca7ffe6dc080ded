"""Mass weighting, Eckart projection and harmonic frequencies (paper §2.3 and appendix A.6, eq. 46–56).

Everything here works on one molecule and computes in float64 (inputs are converted, outputs are
float64 on the input's device). Units: positions Å, masses amu, Cartesian Hessians eV/Å²,
mass-weighted Hessians and their eigenvalues eV/(Å²·amu), frequencies cm⁻¹.

The rigid-body (translation and rotation) subspace is spanned by the Eckart vectors; for a Hessian of
a translation- and rotation-invariant energy at a stationary point the mass-weighted Hessian
annihilates it, and elsewhere the projection removes the residual coupling. Vibrational modes are the
eigenpairs of the mass-weighted Hessian restricted to the orthogonal complement of that subspace.

Downstream (paper §2 and §4): extremum type from the number of imaginary modes, the zero-point energy,
ideal-gas thermochemistry through ASE's ``IdealGasThermo``, and normal modes through ASE's
``VibrationsData`` for viewing; these take NumPy/ASE inputs and return floats or NumPy arrays.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import ase.data
import ase.units
import numpy as np
import torch
from ase import Atoms
from ase.vibrations import VibrationsData

from hip.constants import EV_PER_A2_AMU_TO_CM1

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

    Args: as :func:`eckart_project` (Hessian eV/Å², positions Å, atomic numbers, masses amu).

    Returns:
        :class:`VibrationalModes` (eigenvalues eV/(Å²·amu), mass-weighted eigenvectors, frequencies
        cm⁻¹ with negative values for imaginary modes), ascending; for one atom empty (eigenvectors
        (3, 0)), see :data:`hip.extrema.NO_VIBRATIONAL_MODES`.
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


# ---- downstream quantities: ZPE, thermochemistry, viewable modes (paper §2, §4) ------------------------
def displaced_along_mode(atoms: Atoms, modes: VibrationalModes, index: int = 0, amplitude: float = 0.1) -> Atoms:
    """A copy of ``atoms`` moved along mode ``index`` of ``modes`` (:func:`vibrational_analysis` of its
    Hessian; 0: the lowest): the Cartesian displacement M^(−1/2)·v of its mass-weighted eigenvector v,
    scaled so that the atom that moves most moves ``amplitude`` Å (negative: the other way)."""
    m = np.repeat(atoms.get_masses(), 3)
    step = (modes.eigenvectors[:, index].detach().cpu().numpy() / np.sqrt(m)).reshape(-1, 3)
    moved = atoms.copy()
    moved.positions = atoms.positions + amplitude * step / np.linalg.norm(step, axis=1).max()
    return moved


def zero_point_energy(
    hessian: _ArrayLike,
    pos: _ArrayLike,
    z: _ArrayLike,
    masses: _ArrayLike | None = None,
) -> float:
    """Harmonic zero-point energy ZPE = ½ Σ_k ħω_k over the real vibrational modes, eV (paper §2, A.6.3).

    Frequencies are those of :func:`vibrational_analysis` (mass-weighted, Eckart-projected Hessian);
    imaginary modes (negative frequencies) have no zero-point energy and are left out, with a
    ``UserWarning`` giving their number and frequencies (expected at a transition state).

    Args:
        hessian: (3N, 3N) Cartesian Hessian, eV/Å² (or flat [9N²]).
        pos: [N, 3] positions, Å.
        z: [N] atomic numbers.
        masses: [N] masses, amu, overriding ``atomic_masses(z)``.

    Returns:
        ZPE, eV.
    """
    frequencies = vibrational_analysis(hessian, pos, z, masses).frequencies.cpu()
    imaginary = frequencies < 0
    if imaginary.any():
        warnings.warn(f"zero_point_energy: {int(imaginary.sum())} imaginary mode(s) left out "
                      f"({[round(f, 1) for f in frequencies[imaginary].tolist()]} cm⁻¹)", stacklevel=2)
    return 0.5 * float(frequencies[~imaginary].sum()) * ase.units.invcm


class Thermochemistry(NamedTuple):
    """Ideal-gas, rigid-rotor, harmonic-oscillator thermochemistry of one molecule (ASE's ``IdealGasThermo``).

    Attributes:
        enthalpy: H = E_pot + ZPE + ∫C_p dT, eV.
        entropy: S at ``temperature`` and ``pressure``, eV/K.
        gibbs_energy: G = H − T·S, eV.
        zero_point_energy: ½ Σ ħω over the real modes, eV.
        frequencies: [3N − d] vibrational wavenumbers, cm⁻¹, negative for imaginary modes.
        n_imaginary: imaginary modes; they are left out of ZPE, H and S (ASE warns).
        geometry: ``"nonlinear"``, ``"linear"`` or ``"monatomic"`` (from the Eckart analysis).
        symmetry_number: rotational symmetry number σ used.
    """

    enthalpy: float
    entropy: float
    gibbs_energy: float
    zero_point_energy: float
    frequencies: np.ndarray
    n_imaginary: int
    geometry: str
    symmetry_number: int


#: Tolerance of PySCF's point-group detection (``pyscf.symm.geom.TOLERANCE``, Bohr), looser than PySCF's
#: 1e-5 so that geometries given to 6 decimals (ASE's G2 set) or relaxed by a model keep their symmetry.
SYMMETRY_TOLERANCE = 1e-3


def rotational_symmetry_number(atoms: Atoms, tolerance: float = SYMMETRY_TOLERANCE) -> int:
    """Rotational symmetry number σ of a molecule from its point group, detected by PySCF.

    Args:
        atoms: the molecule; positions Å.
        tolerance: PySCF's ``symm.geom.TOLERANCE`` during the detection, Bohr (set back afterwards).

    Returns:
        σ (1 for C1, Cs, Ci, C∞v; 2 for C2v, D∞h; 3 for C3v; 12 for Td; ...).

    Raises:
        ImportError: PySCF is not installed (``pip install -e ".[dft]"``); pass σ yourself instead.
    """
    try:
        from pyscf import gto
        from pyscf.hessian.thermo import rotational_symmetry_number as pyscf_symmetry_number
        from pyscf.symm import geom
    except ImportError as e:
        raise ImportError("detecting the symmetry number needs PySCF (pip install -e '.[dft]'); "
                          "or pass symmetry_number= yourself") from e
    mol = gto.M(atom=list(zip(atoms.get_chemical_symbols(), atoms.positions.tolist(), strict=True)),
                unit="Angstrom", spin=int(atoms.numbers.sum()) % 2, verbose=0)
    previous, geom.TOLERANCE = geom.TOLERANCE, tolerance
    try:
        return int(pyscf_symmetry_number(mol))
    finally:
        geom.TOLERANCE = previous


def thermochemistry(
    hessian: _ArrayLike,
    atoms: Atoms,
    temperature: float = 298.15,
    pressure: float = 101325.0,
    *,
    potential_energy: float = 0.0,
    symmetry_number: int | None = None,
    spin: float = 0.0,
) -> Thermochemistry:
    """Enthalpy, entropy and Gibbs energy through ASE's ``IdealGasThermo`` (ideal gas, rigid rotor,
    harmonic oscillator), from a Hessian (paper §2 "Zero-point energy": ΔZPE enters ΔG).

    Vibrational energies ħω come from :func:`vibrational_analysis` with ``atoms.get_masses()``;
    the geometry (non-linear, linear, atom) from the number of rigid-body modes; translational and
    rotational terms from ``atoms`` (mass, moments of inertia) as ASE computes them. Imaginary modes
    are left out of every term (ASE warns how many; see ``n_imaginary``).

    Args:
        hessian: (3N, 3N) Cartesian Hessian, eV/Å² (or flat [9N²]).
        atoms: the molecule at which the Hessian was computed; positions Å, masses amu.
        temperature: K.
        pressure: Pa (default 1 atm, as PySCF; ASE's own default is 1 bar).
        potential_energy: electronic energy added to H and G, eV (0: H and G are the thermal
            corrections alone).
        symmetry_number: rotational σ; default detected by :func:`rotational_symmetry_number` (PySCF,
            tolerance :data:`SYMMETRY_TOLERANCE`).
        spin: total electronic spin S (0 for closed-shell molecules), giving S_elec = k ln(2S + 1).

    Returns:
        :class:`Thermochemistry`.

    Raises:
        ValueError: the Hessian does not have shape (3N, 3N) for the N atoms.
        ImportError: ``symmetry_number`` not given and PySCF missing.
    """
    from ase.thermochemistry import IdealGasThermo

    vib = vibrational_analysis(hessian, atoms.positions, atoms.numbers, masses=atoms.get_masses())
    frequencies = vib.frequencies.cpu().numpy()
    geometry = {3: "monatomic", 5: "linear", 6: "nonlinear"}[3 * len(atoms) - len(frequencies)]
    # ASE's convention: an imaginary mode is an imaginary energy
    energies = np.where(frequencies >= 0, frequencies, 1j * np.abs(frequencies)) * ase.units.invcm
    sigma = rotational_symmetry_number(atoms) if symmetry_number is None else int(symmetry_number)
    thermo = IdealGasThermo(energies, geometry, potentialenergy=potential_energy, atoms=atoms,
                            symmetrynumber=sigma, spin=spin, vib_selection="exact", ignore_imag_modes=True)
    enthalpy = float(thermo.get_enthalpy(temperature, verbose=False))
    entropy = float(thermo.get_entropy(temperature, pressure, verbose=False))
    return Thermochemistry(enthalpy, entropy, enthalpy - temperature * entropy, float(thermo.get_ZPE_correction()),
                           frequencies, int(thermo.n_imag), geometry, sigma)


def vibrations_data(hessian: _ArrayLike, atoms: Atoms) -> VibrationsData:
    """ASE ``VibrationsData`` of the Eckart-projected Hessian, for viewing and animating modes.

    The Cartesian Hessian handed to ASE is M^{1/2} P H̃ P M^{1/2} (masses ``atoms.get_masses()``), so ASE's
    own diagonalisation returns exactly the frequencies of :func:`vibrational_analysis` plus d ≈ 0
    rigid-body modes, instead of mixing translations and rotations into the vibrations off equilibrium.

    Args:
        hessian: (3N, 3N) Cartesian Hessian, eV/Å² (or flat [9N²]).
        atoms: the molecule; positions Å.

    Returns:
        ``VibrationsData`` (``get_frequencies``, ``tabulate``, ``write_jmol``, ``iter_animated_mode``...).
    """
    masses = atoms.get_masses()
    sqrt_m = torch.as_tensor(masses, dtype=torch.float64).sqrt().repeat_interleave(3)
    projected = eckart_project(hessian, atoms.positions, atoms.numbers, masses=masses).cpu()
    return VibrationsData.from_2d(atoms, (sqrt_m[:, None] * projected * sqrt_m[None, :]).numpy())


def write_normal_modes(hessian: _ArrayLike, atoms: Atoms, directory: str | Path, frames: int = 30,
                       temperature: float = 300.0) -> list[Path]:
    """Write the normal modes with ASE's ``VibrationsData`` so that a viewer can show them.

    Files: ``modes.xyz`` (Jmol/extended XYZ: every mode of :func:`vibrations_data` as extra columns;
    ``ase gui`` and Jmol read it) and ``mode_KKK.traj`` for each vibrational mode k (ascending
    frequency, index as in :func:`vibrational_analysis`; imaginary modes first), an ASE trajectory of
    ``frames`` images (``ase gui mode_000.traj``).

    Args:
        hessian: (3N, 3N) Cartesian Hessian, eV/Å².
        atoms: the molecule; positions Å.
        directory: created if missing.
        frames: images per mode animation.
        temperature: amplitude of the animations (ASE's classical amplitude at this temperature), K.

    Returns:
        The written paths.
    """
    import ase.io

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = vibrations_data(hessian, atoms)
    data.write_jmol(str(directory / "modes.xyz"))
    paths = [directory / "modes.xyz"]
    # ASE orders modes by eigenvalue; the d rigid-body modes are the exact zeros of the projected Hessian
    energies = data.get_energies()
    n_vib = len(vibrational_analysis(hessian, atoms.positions, atoms.numbers, masses=atoms.get_masses()).frequencies)
    rigid = set(np.argsort(np.abs(energies))[: len(energies) - n_vib].tolist())
    vibrational = [i for i in range(len(energies)) if i not in rigid]
    for k, i in enumerate(vibrational):
        path = directory / f"mode_{k:03d}.traj"
        ase.io.write(path, list(data.iter_animated_mode(i, temperature=ase.units.kB * temperature, frames=frames)))
        paths.append(path)
    return paths
