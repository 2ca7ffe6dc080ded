"""Tests of the DFT labelling tool (hip/data/labelling.py, scripts/label_dft.py).

DFT tests use a cheap level (LDA/STO-3G, or HORM's level on H2) to stay fast; unit conversions are
checked against finite differences computed in Å and eV, a route independent of the Hartree/Bohr conversion factors.
"""

from __future__ import annotations

import inspect
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HORM_SAMPLE, load_script

from hip.constants import ATOM_REFERENCE_ENERGY_EV, HORM_ELEMENTS
from hip.data import labelling as lab

REPO = Path(__file__).resolve().parents[2]
CHEAP = {"xc": "lda,vwn", "basis": "sto-3g", "conv_tol": 1e-12}

# A slightly distorted water molecule (Å): non-zero forces, no symmetry.
WATER_Z = np.array([8, 1, 1])
WATER_POS = np.array([[0.0, 0.0, 0.12], [0.0, 0.78, -0.46], [0.05, -0.74, -0.50]])


def _labels(numbers, positions, hessian=True) -> lab.Labels:
    pytest.importorskip("pyscf")
    return lab.label_molecule(numbers, positions, hessian=hessian, **CHEAP)


def _fake_labels(n: int = 4, seed: int = 0) -> lab.Labels:
    rng = np.random.default_rng(seed)
    numbers = rng.choice([1, 6, 7, 8], size=n)
    return lab.Labels(numbers=numbers, positions=rng.normal(size=(n, 3)), energy=-1000.0 * n,
                      ae=float(rng.normal()), forces=rng.normal(size=(n, 3)),
                      hessian=rng.normal(size=(3 * n, 3 * n)), timings={"total": 0.0})


# ------------------------------------------------------------------------------- defaults and errors


def test_defaults_are_horm_level_of_theory():
    params = inspect.signature(lab.label_molecule).parameters
    assert params["xc"].default == "wb97x"
    assert params["basis"].default == "6-31g*"
    assert params["cart"].default is False
    assert params["grid_level"].default is None  # PySCF's default grid, as HORM


def test_element_without_reference_energy_is_named():
    # F has no reference energy; the error comes before any DFT work (no PySCF needed).
    with pytest.raises(ValueError, match=r"F \(Z=9\)"):
        lab.label_molecule([9, 1], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.92]])


def test_reference_energy_sums_per_element():
    assert lab.reference_energy([8, 1, 1]) == pytest.approx(
        ATOM_REFERENCE_ENERGY_EV[8] + 2 * ATOM_REFERENCE_ENERGY_EV[1])


def test_hessian_flat_layout_is_atom_major():
    rng = np.random.default_rng(1)
    n = 3
    h4 = rng.normal(size=(n, n, 3, 3))
    flat = lab.hessian_to_flat_layout(h4)
    for i in range(n):
        for j in range(n):
            for a in range(3):
                for b in range(3):
                    assert flat[3 * i + a, 3 * j + b] == h4[i, j, a, b]


def test_odd_electron_count_is_rejected():
    pytest.importorskip("pyscf")
    with pytest.raises(ValueError, match="odd number of electrons"):
        lab.label_molecule([7, 8], [[0.0, 0.0, 0.0], [0.0, 0.0, 1.15]], **CHEAP)


# ------------------------------------------------------------------------------- DFT labels


@pytest.mark.slow
def test_forces_are_minus_finite_difference_of_energy():
    base = _labels(WATER_Z, WATER_POS, hessian=False)
    step = 1e-3  # Å
    fd = np.zeros_like(WATER_POS)
    for i in range(len(WATER_Z)):
        for a in range(3):
            plus, minus = WATER_POS.copy(), WATER_POS.copy()
            plus[i, a] += step
            minus[i, a] -= step
            e_plus = _labels(WATER_Z, plus, hessian=False).energy
            e_minus = _labels(WATER_Z, minus, hessian=False).energy
            fd[i, a] = -(e_plus - e_minus) / (2 * step)  # eV/Å, no unit factors involved
    assert np.abs(base.forces).max() > 0.5  # a real test: the geometry is off equilibrium
    np.testing.assert_allclose(base.forces, fd, atol=5e-3)


@pytest.mark.slow
def test_hessian_matches_finite_difference_of_forces():
    base = _labels(WATER_Z, WATER_POS)
    step = 1e-3  # Å
    fd = np.zeros_like(base.hessian)
    for c in range(3 * len(WATER_Z)):
        plus, minus = WATER_POS.copy(), WATER_POS.copy()
        plus.reshape(-1)[c] += step
        minus.reshape(-1)[c] -= step
        f_plus = _labels(WATER_Z, plus, hessian=False).forces.reshape(-1)
        f_minus = _labels(WATER_Z, minus, hessian=False).forces.reshape(-1)
        fd[:, c] = -(f_plus - f_minus) / (2 * step)  # dF/dx = −d²E/dx², in eV/Å²
    assert base.hessian.shape == (9, 9)
    np.testing.assert_allclose(base.hessian, fd, atol=0.05 + 0.01 * np.abs(fd).max())


def test_horm_level_h2_is_symmetric_and_translation_invariant():
    pytest.importorskip("pyscf")
    labels = lab.label_molecule([1, 1], [[0.0, 0.0, 0.0], [0.1, 0.2, 0.80]])  # HORM's level, stretched H2
    h = labels.hessian
    assert h.shape == (6, 6)
    assert labels.converged
    assert set(labels.timings) == {"scf", "gradient", "hessian", "total"}
    # Both hold up to the DFT grid (PySCF's Hessian has no grid response): 0.2 % of the largest entry.
    tol = 2e-3 * np.abs(h).max()
    np.testing.assert_allclose(h, h.T, atol=tol)
    # Translating the molecule changes nothing: forces sum to zero, Hessian rows sum to zero per xyz.
    np.testing.assert_allclose(labels.forces.sum(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(h.reshape(6, 2, 3).sum(axis=1), 0.0, atol=tol)
    # Stretched bond (|r| ≈ 0.83 Å > 0.74 Å): the forces pull the atoms together.
    bond = labels.positions[1] - labels.positions[0]
    assert np.dot(labels.forces[1], bond) < 0
    assert labels.ae == pytest.approx(labels.energy - 2 * ATOM_REFERENCE_ENERGY_EV[1])


# ------------------------------------------------------------------------------- HORM-format LMDB


def test_make_horm_data_has_horm_fields_and_dtypes():
    labels = _fake_labels(5)
    data = lab.make_horm_data(labels, rxn=7)
    assert set(data.keys()) == set(lab.HORM_FIELDS)
    for name, dtype in lab.HORM_FIELDS.items():
        assert data[name].dtype == dtype, name
    n = 5
    assert data.pos.shape == (n, 3) and data.forces.shape == (n, 3)
    assert data.one_hot.shape == (n, len(HORM_ELEMENTS)) and data.charges.shape == (n,)
    assert data.hessian.shape == ((3 * n) ** 2,)
    assert data.natoms.shape == data.energy.shape == data.ae.shape == data.rxn.shape == ()
    assert int(data.natoms) == n and int(data.rxn) == 7
    assert torch.equal(data.one_hot.argmax(1), torch.tensor([HORM_ELEMENTS.index(z) for z in labels.numbers]))
    assert data.one_hot.sum().item() == n
    torch.testing.assert_close(data.hessian.reshape(3 * n, 3 * n).double(), torch.from_numpy(labels.hessian),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(not HORM_SAMPLE.exists(), reason="HORM sample shard not available")
def test_entries_match_a_real_horm_entry_field_by_field(tmp_path):
    # A copy: py-lmdb refuses a second environment on a file that other tests may hold open.
    copy = tmp_path / "horm.lmdb"
    shutil.copyfile(HORM_SAMPLE, copy)
    env = lab.open_lmdb(copy, readonly=True)
    horm = lab.read_entry(env, 0)
    env.close()
    ours = lab.make_horm_data(_fake_labels(3), rxn=0)
    assert set(ours.keys()) == set(horm.keys())
    for name in horm.keys():
        assert ours[name].dtype == horm[name].dtype, name
        assert ours[name].dim() == horm[name].dim(), name


def test_lmdb_round_trip_and_resume(tmp_path):
    path = tmp_path / "out.lmdb"
    entries = [lab.make_horm_data(_fake_labels(3 + i, seed=i), rxn=i) for i in range(3)]
    env = lab.open_lmdb(path)
    assert lab.write_entry(env, 0, entries[0])
    assert lab.write_entry(env, 1, entries[1])
    assert not lab.write_entry(env, 1, entries[2])  # present: skipped, not overwritten
    with pytest.raises(ValueError, match="gap"):
        lab.write_entry(env, 5, entries[2])
    assert lab.write_entry(env, 2, entries[2])
    env.close()

    size = lab.compact_lmdb(path)
    assert size == path.stat().st_size < 1 << 20
    env = lab.open_lmdb(path, readonly=True)
    with env.begin() as txn:
        keys = sorted(k for k, _ in txn.cursor())
        assert pickle.loads(txn.get(b"length")) == 3
    assert keys == [b"0", b"1", b"2", b"length"]
    for i, expected in enumerate(entries):
        got = lab.read_entry(env, i)
        for name in lab.HORM_FIELDS:
            assert got[name].dtype == expected[name].dtype
            assert torch.equal(got[name], expected[name]), (i, name)
    with pytest.raises(KeyError, match="key 9"):
        lab.read_entry(env, 9)
    env.close()


# ------------------------------------------------------------------------------- geometries and plan


def test_g2_geometry_and_errors():
    pytest.importorskip("ase")
    water = lab.g2_geometry("H2O")
    assert sorted(water.numbers.tolist()) == [1, 1, 8] and water.positions.shape == (3, 3)
    with pytest.raises(KeyError, match="not in ASE's G2"):
        lab.g2_geometry("NotAMolecule")
    with pytest.raises(ValueError, match="open-shell"):
        lab.g2_geometry("O2")  # triplet


def test_read_geometries_reads_all_frames(tmp_path):
    pytest.importorskip("ase")
    import ase
    import ase.io

    frames = [ase.Atoms("OH2", positions=WATER_POS + 0.1 * k) for k in range(3)]
    ase.io.write(tmp_path / "w.xyz", frames)
    geoms = lab.read_geometries(tmp_path / "w.xyz")
    assert [g.name for g in geoms] == ["w.xyz:0", "w.xyz:1", "w.xyz:2"]
    np.testing.assert_allclose(geoms[2].positions, WATER_POS + 0.2, atol=1e-6)
    with pytest.raises(FileNotFoundError, match=r"missing\.xyz"):
        lab.read_geometries(tmp_path / "missing.xyz")


def test_displacements_are_seeded_and_respect_min_distance():
    pos = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.3]])
    a = lab.displace(pos, 0.05, lab.displacement_rng(0, "X", 1))
    b = lab.displace(pos, 0.05, lab.displacement_rng(0, "X", 1))
    c = lab.displace(pos, 0.05, lab.displacement_rng(0, "X", 2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert 0 < np.abs(a - pos).max() < 0.5
    ok = lab.displace(pos, 0.2, np.random.default_rng(0), min_dist=0.25)
    assert lab.min_distance(ok) >= 0.25
    with pytest.raises(ValueError, match="apart"):
        lab.displace(pos, 0.01, np.random.default_rng(0), min_dist=1.0, max_tries=5)


def test_plan_is_deterministic_and_keys_count_per_split():
    mols = [lab.Geometry(f"M{i}", np.array([1, 1]), np.array([[0.0, 0, 0], [0, 0, 0.74]])) for i in range(5)]
    splits = lab.split_molecules(5, 0.4, seed=3)
    assert splits.count("val") == 2 and splits == lab.split_molecules(5, 0.4, seed=3)
    plan = lab.plan_labelling(mols, displacements=2, sigma=0.05, seed=1, splits=splits)
    again = lab.plan_labelling(mols, displacements=2, sigma=0.05, seed=1, splits=splits)
    assert len(plan) == 15
    for p, q in zip(plan, again, strict=True):
        np.testing.assert_array_equal(p.geometry.positions, q.geometry.positions)
    for split in ("train", "val"):
        assert [p.key for p in plan if p.split == split] == list(range(sum(p.split == split for p in plan)))
    # All geometries of a molecule share its split; variant 0 is the input geometry.
    assert all(p.split == splits[p.molecule_id] for p in plan)
    for p in plan:
        if p.variant == 0:
            np.testing.assert_array_equal(p.geometry.positions, mols[p.molecule_id].positions)
    # A molecule's displaced geometries do not depend on the other molecules.
    alone = lab.plan_labelling(mols[3:4], displacements=2, sigma=0.05, seed=1)
    in_plan = next(p for p in plan if p.molecule_id == 3 and p.variant == 2)
    np.testing.assert_array_equal(alone[2].geometry.positions, in_plan.geometry.positions)


# ------------------------------------------------------------------------------- the script


@pytest.mark.slow
def test_script_labels_resumes_and_refuses_changed_inputs(tmp_path, capsys):
    pytest.importorskip("pyscf")
    pytest.importorskip("ase")
    script = load_script("label_dft")
    argv = ["--molecules", "H2O", "NH3", "--displacements", "1", "--sigma", "0.03", "--seed", "0",
            "--output-dir", str(tmp_path), "--val-fraction", "0.5", "--xc", "lda,vwn", "--basis", "sto-3g"]
    assert script.main(argv) == 0
    first = capsys.readouterr().out
    assert "labelled 4, skipped 0" in first
    assert script.main(argv) == 0
    assert "labelled 0, skipped 4" in capsys.readouterr().out

    stats = lab.dataset_statistics([tmp_path / "train.lmdb", tmp_path / "val.lmdb"])
    assert stats["entries"] == 4 and stats["molecules"] == 2
    for f in stats["files"].values():  # split by molecule: one molecule, two geometries per file
        assert f["entries"] == 2 and len(f["molecule_ids"]) == 1

    # Other displacements for the same keys: refused, naming file, key and field.
    with pytest.raises(ValueError, match=r"key 1 .*'pos'"):
        script.main([*argv, "--sigma", "0.05"])
