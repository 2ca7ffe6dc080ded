"""Tests of the DFT labelling plan and tool (hip/data/labelling.py, scripts/label_dft.py).

The DFT itself is tested in tests/test_dft.py, the LMDB reader/writer in tests/data/test_store.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HORM_SAMPLE, load_script

from hip.constants import HORM_ELEMENTS
from hip.data import labelling as lab
from hip.data import store
from hip.dft import Labels

REPO = Path(__file__).resolve().parents[2]

# A slightly distorted water molecule (Å).
WATER_POS = np.array([[0.0, 0.0, 0.12], [0.0, 0.78, -0.46], [0.05, -0.74, -0.50]])


def fake_labels(n: int = 4, seed: int = 0) -> Labels:
    rng = np.random.default_rng(seed)
    numbers = rng.choice([1, 6, 7, 8], size=n)
    return Labels(numbers=numbers, positions=rng.normal(size=(n, 3)), energy=-1000.0 * n,
                  ae=float(rng.normal()), forces=rng.normal(size=(n, 3)),
                  hessian=rng.normal(size=(3 * n, 3 * n)), timings={"total": 0.0})


# ------------------------------------------------------------------------------- HORM-format LMDB


def test_make_horm_data_has_horm_fields_and_dtypes():
    labels = fake_labels(5)
    data = lab.make_horm_data(labels, rxn=7)
    assert set(data.keys()) == set(store.HORM_FIELDS)
    for name, dtype in store.HORM_FIELDS.items():
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
def test_entries_match_a_real_horm_entry_field_by_field():
    horm = store.read_entry(HORM_SAMPLE, 0)  # the shard other tests hold open: one shared environment
    ours = lab.make_horm_data(fake_labels(3), rxn=0)
    assert set(ours.keys()) == set(horm.keys())
    for name in horm.keys():
        assert ours[name].dtype == horm[name].dtype, name
        assert ours[name].dim() == horm[name].dim(), name


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
