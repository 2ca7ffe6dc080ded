"""Tests of hip.vibrations: mass weighting, Eckart projection, frequencies (paper A.6)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.constants
import torch

from hip.constants import BOHR_TO_ANGSTROM, HARTREE_TO_EV
from hip.vibrations import (
    EV_PER_A2_AMU_TO_CM1,
    atomic_masses,
    eckart_project,
    eckart_projector,
    eckart_vectors,
    mass_weight,
    vibrational_analysis,
)

HORM_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "horm" / "sample_100.lmdb"

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
    h = hess_au.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n) * HARTREE_TO_EV / BOHR_TO_ANGSTROM**2
    ours = vibrational_analysis(h, torch.tensor(mol.atom_coords(unit="Angstrom")), z).frequencies.numpy()
    theirs = thermo.harmonic_analysis(mol, hess_au, imaginary_freq=False, mass=masses.numpy())
    theirs = np.sort(theirs["freq_wavenumber"])
    print("water frequencies, cm^-1: hip", ours, "pyscf", theirs, "max diff", np.abs(ours - theirs).max())
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, theirs, atol=1.0)
