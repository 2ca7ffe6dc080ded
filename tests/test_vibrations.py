"""Tests of hip.vibrations: mass weighting, Eckart projection, frequencies (paper A.6)."""

from __future__ import annotations

import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.constants
import torch
from ase import Atoms
from helpers import HORM_SAMPLE

from hip.constants import EV_PER_A2_AMU_TO_CM1, HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2, HARTREE_TO_EV
from hip.vibrations import (
    atomic_masses,
    eckart_project,
    eckart_projector,
    eckart_vectors,
    mass_weight,
    vibrational_analysis,
)

# a non-planar 5-atom molecule (CH3OH-like heavy frame, arbitrary but fixed)
POS5 = np.array([[0.0, 0.0, 0.0], [1.43, 0.0, 0.0], [-0.36, 1.03, 0.0],
                 [-0.36, -0.51, 0.89], [1.75, 0.9, -0.2]])
Z5 = np.array([6, 8, 1, 1, 1])
CO2_POS = np.array([[0.0, 0.0, 0.0], [1.16, 0.0, 0.0], [-1.16, 0.0, 0.0]])
CO2_Z = np.array([6, 8, 8])


# ---------------------------------------------------------------- independent numpy references
def ref_masses(z):
    return np.array([{1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}[int(a)] for a in z])


def ref_rigid_and_vib(pos, m):
    """Rigid-body and vibrational bases from lab-frame translations and infinitesimal rotations (SVD)."""
    n = len(m)
    r = pos - (m[:, None] * pos).sum(0) / m.sum()
    sm = np.sqrt(m)
    vecs = []
    for a in range(3):
        t = np.zeros((n, 3))
        t[:, a] = sm
        vecs.append(t.ravel())
    for a in range(3):
        vecs.append((sm[:, None] * np.cross(np.eye(3)[a], r)).ravel())
    u, s, _ = np.linalg.svd(np.array(vecs).T, full_matrices=True)
    rank = int((s > 1e-6 * s[0]).sum())
    return u[:, :rank], u[:, rank:]


def ref_mass_weight(h, m):
    w = 1 / np.sqrt(np.repeat(m, 3))
    return h * w[:, None] * w[None, :]


def spring_hessian(pos, stretch=1.0, seed=0):
    """Hessian of V = Σ_pairs ½ k_ij (r_ij − r0_ij)², with r0 = stretch·r (stretch = 1: equilibrium).

    Translation invariant always; rotation invariant (annihilates rotations) only at equilibrium.
    """
    rng = np.random.default_rng(seed)
    n = len(pos)
    h = np.zeros((3 * n, 3 * n))
    for i in range(n):
        for j in range(i + 1, n):
            d = pos[i] - pos[j]
            r = np.linalg.norm(d)
            u = d / r
            k = rng.uniform(5.0, 30.0)
            block = k * np.outer(u, u) + k * (1 - stretch) * (np.eye(3) - np.outer(u, u))
            for a, b, sign in ((i, i, 1), (j, j, 1), (i, j, -1), (j, i, -1)):
                h[3 * a:3 * a + 3, 3 * b:3 * b + 3] += sign * block
    return h


def random_rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# ---------------------------------------------------------------- tests
def test_wavenumber_conversion_constant():
    expected = math.sqrt(scipy.constants.e / scipy.constants.atomic_mass) * 1e10 / (
        2 * math.pi * scipy.constants.c * 100)
    assert EV_PER_A2_AMU_TO_CM1 == pytest.approx(expected, rel=1e-6)
    assert EV_PER_A2_AMU_TO_CM1 == pytest.approx(521.47, abs=0.01)


def test_atomic_masses():
    z = torch.tensor([1, 6, 7, 8])
    m = atomic_masses(z)
    assert m.dtype == torch.float64
    np.testing.assert_allclose(m.numpy(), ref_masses(z.numpy()), atol=1e-3)
    with pytest.raises(ValueError, match="no mass"):
        atomic_masses([0, 1])


def test_mass_weight_matches_numpy():
    h = spring_hessian(POS5, stretch=0.9)
    m = ref_masses(Z5)
    got = mass_weight(torch.tensor(h), torch.tensor(m))
    np.testing.assert_allclose(got.numpy(), ref_mass_weight(h, m), rtol=1e-14)
    np.testing.assert_allclose(mass_weight(torch.tensor(h).reshape(-1), m).numpy(), got.numpy())
    with pytest.raises(ValueError, match="atoms need"):
        mass_weight(torch.zeros(6, 6), m)


@pytest.mark.parametrize(("pos", "z", "d"), [(POS5, Z5, 6), (CO2_POS, CO2_Z, 5), (POS5[:1], Z5[:1], 3)])
def test_eckart_vectors_span_rigid_subspace(pos, z, d):
    m = ref_masses(z)
    u = eckart_vectors(torch.tensor(pos), torch.tensor(m)).numpy()
    assert u.shape == (d, 3 * len(z))
    np.testing.assert_allclose(u @ u.T, np.eye(d), atol=1e-12)
    rigid, _ = ref_rigid_and_vib(pos, m)
    np.testing.assert_allclose(u.T @ u, rigid @ rigid.T, atol=1e-12)
    p = eckart_projector(torch.tensor(pos), torch.tensor(m)).numpy()
    np.testing.assert_allclose(p @ p, p, atol=1e-12)
    np.testing.assert_allclose(p, np.eye(3 * len(z)) - rigid @ rigid.T, atol=1e-12)


def test_equilibrium_spring_network_leaves_six_zero_modes():
    h = spring_hessian(POS5)
    m = ref_masses(Z5)
    hmw = ref_mass_weight(h, m)
    rigid, _ = ref_rigid_and_vib(POS5, m)
    assert np.abs(hmw @ rigid).max() < 1e-12  # invariant by construction
    projected = eckart_project(torch.tensor(h), torch.tensor(POS5), torch.tensor(Z5)).numpy()
    lam = np.linalg.eigvalsh(projected)
    assert (np.abs(lam) < 1e-10 * np.abs(lam).max()).sum() == 6
    np.testing.assert_allclose(projected, hmw, atol=1e-12)  # nothing to remove at equilibrium
    vib = vibrational_analysis(torch.tensor(h), torch.tensor(POS5), torch.tensor(Z5))
    np.testing.assert_allclose(vib.eigenvalues.numpy(), np.linalg.eigvalsh(hmw)[6:], rtol=1e-10)


@pytest.mark.parametrize("stretch", [0.9, 1.1])  # tension / compression: rotations do not decouple
def test_projection_matches_numpy_reference_off_equilibrium(stretch):
    h = spring_hessian(POS5, stretch=stretch, seed=1)
    m = ref_masses(Z5)
    rigid, vib_basis = ref_rigid_and_vib(POS5, m)
    hmw = ref_mass_weight(h, m)
    p_ref = np.eye(15) - rigid @ rigid.T
    projected = eckart_project(torch.tensor(h), torch.tensor(POS5), torch.tensor(Z5)).numpy()
    np.testing.assert_allclose(projected, p_ref @ hmw @ p_ref, atol=1e-12)
    lam_all = np.linalg.eigvalsh(projected)
    assert (np.abs(lam_all) < 1e-10 * np.abs(lam_all).max()).sum() == 6

    vib = vibrational_analysis(h, torch.tensor(POS5), Z5)
    lam_ref = np.linalg.eigvalsh(vib_basis.T @ hmw @ vib_basis)
    np.testing.assert_allclose(vib.eigenvalues.numpy(), lam_ref, rtol=1e-10, atol=1e-12)
    vecs = vib.eigenvectors.numpy()
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(9), atol=1e-12)
    assert np.abs(rigid.T @ vecs).max() < 1e-12
    np.testing.assert_allclose(projected @ vecs, vecs * vib.eigenvalues.numpy(), atol=1e-10)
    expected_freq = np.sign(lam_ref) * np.sqrt(np.abs(lam_ref)) * EV_PER_A2_AMU_TO_CM1
    np.testing.assert_allclose(vib.frequencies.numpy(), expected_freq, rtol=1e-10)


def test_linear_molecule_keeps_four_modes():
    m = ref_masses(CO2_Z)
    rigid, vib_basis = ref_rigid_and_vib(CO2_POS, m)
    assert rigid.shape[1] == 5
    a = np.random.default_rng(2).normal(size=(9, 9))
    hmw = vib_basis @ vib_basis.T @ (a @ a.T) @ vib_basis @ vib_basis.T  # invariant, PSD, 5 null modes
    h = hmw * np.sqrt(np.repeat(m, 3))[:, None] * np.sqrt(np.repeat(m, 3))[None, :]
    projected = eckart_project(h, torch.tensor(CO2_POS), CO2_Z).numpy()
    lam = np.linalg.eigvalsh(projected)
    assert (np.abs(lam) < 1e-10 * lam.max()).sum() == 5
    vib = vibrational_analysis(h, torch.tensor(CO2_POS), CO2_Z)
    assert vib.eigenvalues.shape == (4,) and vib.eigenvectors.shape == (9, 4)
    np.testing.assert_allclose(vib.eigenvalues.numpy(), lam[5:], rtol=1e-10)


def test_rotation_invariance():
    h = spring_hessian(POS5, stretch=0.9, seed=3)
    rot = random_rotation(4)
    rb = np.kron(np.eye(len(Z5)), rot)
    pos_rot = POS5 @ rot.T + np.array([0.3, -1.0, 2.0])
    h_rot = rb @ h @ rb.T
    a = vibrational_analysis(h, POS5, Z5)
    b = vibrational_analysis(h_rot, pos_rot, Z5)
    np.testing.assert_allclose(b.frequencies.numpy(), a.frequencies.numpy(), rtol=1e-10)
    cos = np.abs(np.sum((rb @ a.eigenvectors.numpy()) * b.eigenvectors.numpy(), axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-8)
    np.testing.assert_allclose(eckart_project(h_rot, pos_rot, Z5).numpy(),
                               rb @ eckart_project(h, POS5, Z5).numpy() @ rb.T, atol=1e-12)


def _horm_sample(key: int):
    lmdb = pytest.importorskip("lmdb")
    if not HORM_SAMPLE.exists():
        pytest.skip(f"{HORM_SAMPLE} not available")
    env = lmdb.open(str(HORM_SAMPLE), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        data = pickle.loads(txn.get(str(key).encode()))
    env.close()
    return data.pos.double().numpy(), data.charges.long().numpy(), data.hessian.double().numpy()


@pytest.mark.parametrize("key", [0, 83])
def test_real_horm_hessian(key):
    pos, z, flat = _horm_sample(key)
    n = len(z)
    h = flat.reshape(3 * n, 3 * n)
    m = ref_masses(z)
    rigid, vib_basis = ref_rigid_and_vib(pos, m)
    hmw = ref_mass_weight(0.5 * (h + h.T), m)
    projected = eckart_project(torch.tensor(flat), torch.tensor(pos), torch.tensor(z)).numpy()
    lam = np.linalg.eigvalsh(projected)
    assert (np.abs(lam) < 1e-9 * np.abs(lam).max()).sum() == 6
    p_ref = np.eye(3 * n) - rigid @ rigid.T
    np.testing.assert_allclose(projected, p_ref @ hmw @ p_ref, atol=1e-10)
    vib = vibrational_analysis(torch.tensor(flat), torch.tensor(pos), torch.tensor(z))
    assert vib.eigenvalues.shape == (3 * n - 6,)
    np.testing.assert_allclose(vib.eigenvalues.numpy(), np.linalg.eigvalsh(vib_basis.T @ hmw @ vib_basis),
                               rtol=1e-9, atol=1e-10)


@pytest.fixture(scope="module")
def pyscf_water():
    pytest.importorskip("pyscf")
    from pyscf import dft, gto

    mol = gto.M(atom="O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692", basis="6-31g*",
                    cart=False, verbose=0)
    mf = dft.RKS(mol)
    mf.xc = "wb97x"
    mf.grids.level = 1  # speed only: both analyses below read the same Hessian
    mf.kernel()
    return mol, mf.Hessian().kernel()


def test_water_frequencies_match_pyscf(pyscf_water):
    from pyscf.hessian import thermo

    mol, hess_au = pyscf_water  # (N, N, 3, 3) Hartree/Bohr²
    n = mol.natm
    z = torch.tensor([int(c) for c in mol.atom_charges()])
    masses = atomic_masses(z)
    h = hess_au.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n) * HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2
    ours = vibrational_analysis(h, torch.tensor(mol.atom_coords(unit="Angstrom")), z).frequencies.numpy()
    theirs = thermo.harmonic_analysis(mol, hess_au, imaginary_freq=False, mass=masses.numpy())
    theirs = np.sort(theirs["freq_wavenumber"])
    print("water frequencies, cm^-1: hip", ours, "pyscf", theirs, "max diff", np.abs(ours - theirs).max())
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, theirs, atol=1.0)


# ---------------------------------------------------------------- ZPE, thermochemistry and modes vs PySCF/ASE
EMBEDDED = Path(__file__).resolve().parents[1] / "data" / "embedded"


def _dft_hessians(path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(where, z [N], pos [N, 3] Å, symmetrised Hessian (3N, 3N) eV/Å²) of every entry of a shard."""
    from hip.data.horm import HormDataset

    dataset = HormDataset(path, cache_dir=None)
    out = []
    for i in range(len(dataset)):
        entry = dataset.read(i)
        z, pos, flat = entry["z"].numpy(), entry["pos"].double().numpy(), entry["hessian"].double().numpy()
        h = flat.reshape(3 * len(z), 3 * len(z))
        out.append((f"{Path(path).name}[{i}]", z, pos, 0.5 * (h + h.T)))
    return out


def _pyscf_mol(z, pos):
    from pyscf import gto

    return gto.M(atom=list(zip(z.tolist(), pos.tolist(), strict=True)), unit="Angstrom",
                 spin=int(z.sum()) % 2, verbose=0)


def _pyscf_hessian(h, n):
    """eV/Å² (3N, 3N) → PySCF's Hartree/Bohr² (N, N, 3, 3)."""
    return (h / HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2).reshape(n, 3, n, 3).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("shard", ["embedded", "horm_sample"])
def test_frequencies_zpe_and_imaginary_count_match_pyscf(shard):
    """Every DFT Hessian of a shard: frequencies within 0.1 cm⁻¹ of ``harmonic_analysis``, ZPE within 1e-5 eV of
    ``thermo.thermo`` (both leave imaginary modes out), the same number of imaginary modes.

    PySCF diagonalises with ``eigh`` (lower triangle), so both sides get the symmetrised Hessian; PySCF's
    masses (``isotope_avg``) are given to both."""
    pytest.importorskip("pyscf")
    from types import SimpleNamespace

    from pyscf.hessian import thermo

    from hip.extrema import count_imaginary
    from hip.vibrations import zero_point_energy

    if shard == "horm_sample" and not HORM_SAMPLE.exists():
        pytest.skip(f"{HORM_SAMPLE} not available")
    paths = [EMBEDDED / "train.lmdb", EMBEDDED / "val.lmdb"] if shard == "embedded" else [HORM_SAMPLE]
    molecules = [m for p in paths for m in _dft_hessians(p)]
    worst_freq = worst_zpe = 0.0
    n_with_imaginary = 0
    for where, z, pos, h in molecules:
        mol = _pyscf_mol(z, pos)
        masses = mol.atom_mass_list(isotope_avg=True)
        theirs = thermo.harmonic_analysis(mol, _pyscf_hessian(h, len(z)), imaginary_freq=False, mass=masses)
        ours = vibrational_analysis(h, pos, z, masses=masses).frequencies.numpy()
        worst_freq = max(worst_freq, np.abs(ours - np.sort(theirs["freq_wavenumber"])).max())
        n_imaginary = count_imaginary(ours, 0.0)
        assert n_imaginary == theirs["freq_error"], where
        n_with_imaginary += n_imaginary > 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            zpe = zero_point_energy(h, pos, z, masses=masses)
        assert (len(caught) == 1) == (n_imaginary > 0), where  # imaginary modes are never dropped silently
        pyscf_zpe = thermo.thermo(SimpleNamespace(mol=mol, e_tot=0.0), theirs["freq_au"])["ZPE"][0] * HARTREE_TO_EV
        worst_zpe = max(worst_zpe, abs(zpe - pyscf_zpe))
    print(f"{shard}: {len(molecules)} DFT Hessians ({n_with_imaginary} with imaginary modes): max |Δν| "
          f"{worst_freq:.2e} cm^-1, max |ΔZPE| {worst_zpe:.2e} eV")
    assert worst_freq < 0.1
    assert worst_zpe < 1e-5


def _embedded_molecule(formula: str):
    """Variant 0 (the undisplaced G2 geometry) of a molecule of the embedded training set."""
    for where, z, pos, h in _dft_hessians(EMBEDDED / "train.lmdb"):
        if Atoms(numbers=z).get_chemical_formula() == formula:
            return where, z, pos, h
    raise LookupError(formula)


@pytest.mark.parametrize(("formula", "geometry", "sigma"), [
    ("H2O", "nonlinear", 2), ("CH4", "nonlinear", 12), ("CO2", "linear", 2), ("CHN", "linear", 1)])
def test_thermochemistry_matches_pyscf(formula, geometry, sigma):
    """H, S, G of rigid molecules (DFT Hessians) vs PySCF's ``thermo``. Conventions aligned: the same
    pressure (1 atm: ASE's default would be 1 bar), PySCF's masses on the ASE atoms, the electronic
    energy as ASE's ``potentialenergy`` and PySCF's ``e_tot``, singlet (S_elec = 0). Both then sum the
    same ideal-gas, rigid-rotor, harmonic-oscillator terms (H = E + ZPE + ∫C_p dT with C_p ⊃ k_B); what is
    left is the CODATA version of the constants (ASE 2014, PySCF 2018), about 1e-8 relative."""
    pytest.importorskip("pyscf")
    from types import SimpleNamespace

    from pyscf.hessian import thermo

    from hip.vibrations import thermochemistry

    _, z, pos, h = _embedded_molecule(formula)
    mol = _pyscf_mol(z, pos)
    atoms = Atoms(numbers=z, positions=pos, masses=mol.atom_mass_list(isotope_avg=True))
    e_elec = -2000.0  # eV: any value, added by both
    theirs_freq = thermo.harmonic_analysis(mol, _pyscf_hessian(h, len(z)))["freq_au"]
    theirs = thermo.thermo(SimpleNamespace(mol=mol, e_tot=e_elec / HARTREE_TO_EV), theirs_freq, 298.15, 101325)
    ours = thermochemistry(h, atoms, 298.15, 101325.0, potential_energy=e_elec)
    assert (ours.geometry, ours.symmetry_number, ours.n_imaginary) == (geometry, sigma, 0)
    assert theirs["sym_number"][0] == sigma
    print(f"{formula}: ΔH {ours.enthalpy - theirs['H_tot'][0] * HARTREE_TO_EV:.1e} eV, "
          f"ΔS {ours.entropy - theirs['S_tot'][0] * HARTREE_TO_EV:.1e} eV/K, "
          f"ΔG {ours.gibbs_energy - theirs['G_tot'][0] * HARTREE_TO_EV:.1e} eV")
    assert ours.enthalpy == pytest.approx(theirs["H_tot"][0] * HARTREE_TO_EV, abs=1e-6)
    assert ours.entropy == pytest.approx(theirs["S_tot"][0] * HARTREE_TO_EV, abs=1e-10)
    assert ours.gibbs_energy == pytest.approx(theirs["G_tot"][0] * HARTREE_TO_EV, abs=1e-6)
    assert ours.zero_point_energy == pytest.approx(theirs["ZPE"][0] * HARTREE_TO_EV, abs=1e-6)


def test_thermochemistry_of_a_saddle_point_leaves_imaginary_modes_out_loudly():
    """A HORM geometry with one imaginary mode: ASE warns, n_imaginary says so, and H/S agree with PySCF's
    thermo, which also keeps only the real modes."""
    pytest.importorskip("pyscf")
    from types import SimpleNamespace

    from pyscf.hessian import thermo

    from hip.extrema import count_imaginary, extremum_type
    from hip.vibrations import thermochemistry

    if not HORM_SAMPLE.exists():
        pytest.skip(f"{HORM_SAMPLE} not available")
    where, z, pos, h = next(m for m in _dft_hessians(HORM_SAMPLE)
                            if count_imaginary(vibrational_analysis(m[3], m[2], m[1]).frequencies, 0.0) == 1)
    mol = _pyscf_mol(z, pos)
    atoms = Atoms(numbers=z, positions=pos, masses=mol.atom_mass_list(isotope_avg=True))
    with pytest.warns(UserWarning, match="1 imag"):
        ours = thermochemistry(h, atoms, symmetry_number=1)
    assert ours.n_imaginary == 1 and ours.frequencies[0] < 0 and extremum_type(ours.n_imaginary) == "transition state"
    freq = thermo.harmonic_analysis(mol, _pyscf_hessian(h, len(z)))["freq_au"]
    theirs = thermo.thermo(SimpleNamespace(mol=mol, e_tot=0.0), freq, 298.15, 101325)
    assert theirs["sym_number"][0] == 1, where
    assert ours.enthalpy == pytest.approx(theirs["H_tot"][0] * HARTREE_TO_EV, abs=1e-6)
    assert ours.entropy == pytest.approx(theirs["S_tot"][0] * HARTREE_TO_EV, abs=1e-10)


@pytest.mark.parametrize(("name", "sigma"), [("H2O", 2), ("NH3", 3), ("CH4", 12), ("C6H6", 12), ("CO2", 2),
                                             ("HCN", 1), ("C2H4", 4), ("CH3OH", 1)])
def test_rotational_symmetry_numbers(name, sigma):
    """Textbook σ of the point groups C2v, C3v, Td, D6h, D∞h, C∞v, D2h, Cs (ASE's G2 geometries, 6 decimals);
    a distortion of 0.01 Å breaks the symmetry; PySCF's own tolerance is left as it was."""
    pytest.importorskip("pyscf")
    from ase.build import molecule
    from pyscf.symm import geom

    from hip.vibrations import rotational_symmetry_number

    tolerance = geom.TOLERANCE
    atoms = molecule(name)
    assert rotational_symmetry_number(atoms) == sigma
    atoms.positions += np.random.default_rng(0).normal(scale=0.01, size=atoms.positions.shape)
    assert rotational_symmetry_number(atoms) == 1
    assert geom.TOLERANCE == tolerance


def test_extremum_type():
    from hip.extrema import extremum_type

    assert [extremum_type(k) for k in range(3)] == ["minimum", "transition state", "saddle point of order 2"]
    with pytest.raises(ValueError, match="≥ 0"):
        extremum_type(-1)


def test_normal_modes_through_ase_vibrations_data(tmp_path):
    """ASE's own diagonalisation of :func:`vibrations_data` gives our frequencies (plus d zeros), and each
    written trajectory moves the atoms along M^{-1/2}·(our mass-weighted eigenvector)."""
    import ase.io

    from hip.vibrations import vibrations_data, write_normal_modes

    h = spring_hessian(POS5, stretch=0.9, seed=5)  # off equilibrium: rotations couple unless projected
    atoms = Atoms(numbers=Z5, positions=POS5)
    ours = vibrational_analysis(h, POS5, Z5, masses=atoms.get_masses())
    ase_freq = vibrations_data(h, atoms).get_frequencies()
    ase_freq = np.sort(ase_freq.real - np.abs(ase_freq.imag))
    rigid = np.argsort(np.abs(ase_freq))[:6]
    assert np.abs(ase_freq[rigid]).max() < 1e-3
    np.testing.assert_allclose(np.delete(ase_freq, rigid), ours.frequencies.numpy(), rtol=1e-8)

    paths = write_normal_modes(h, atoms, tmp_path / "modes", frames=8)
    assert [p.name for p in paths] == ["modes.xyz"] + [f"mode_{k:03d}.traj" for k in range(9)]
    assert len(ase.io.read(paths[0], index=":")) == 15  # every mode, rigid ones included
    inv_sqrt_m = np.repeat(atoms.get_masses(), 3) ** -0.5
    for k, path in enumerate(paths[1:]):
        images = ase.io.read(path, index=":")
        assert len(images) == 8
        displacement = np.array([im.positions - POS5 for im in images]).reshape(8, -1)
        largest = displacement[np.argmax(np.linalg.norm(displacement, axis=1))]
        expected = inv_sqrt_m * ours.eigenvectors[:, k].numpy()
        cos = abs(largest @ expected) / (np.linalg.norm(largest) * np.linalg.norm(expected))
        assert cos == pytest.approx(1.0, abs=1e-6), k
