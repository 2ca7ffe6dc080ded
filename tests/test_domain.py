"""Training domain in checkpoints and the per-frame domain warnings (hip.domain, HIPCalculator)."""

from __future__ import annotations

import pickle
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import lmdb
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from helpers import TINY_MODEL, authors_config, read_horm_entries

from hip.calculator import HIPCalculator
from hip.data import HormDataModule
from hip.domain import (
    FORCE_THRESHOLD,
    SUM_RULE_THRESHOLD,
    TrainingDomain,
    domain_warnings,
    sum_rule_residual,
)
from hip.model.checkpoints import CheckpointError, load_checkpoint
from hip.training import HIPModule

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"hip_small": ROOT / "ckpt" / "hip_small.ckpt", "backbone_ef_small": ROOT / "ckpt" / "backbone_ef_small.ckpt"}
EMBEDDED_TRAIN = ROOT / "data" / "embedded" / "train.lmdb"
#: A small domain for the built cases: H, C, O, 3–9 atoms.
DOMAIN = TrainingDomain((1, 6, 8), (3, 9), ("x.lmdb [0-9]",), 10, 3, None, True, "recorded")


def embedded_entries() -> list:
    """Every entry of the embedded training shard, read with lmdb and pickle (independent of hip)."""
    env = lmdb.open(str(EMBEDDED_TRAIN), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        entries = [pickle.loads(txn.get(str(i).encode())) for i in range(pickle.loads(txn.get(b"length")))]
    env.close()
    return entries


def codes(found) -> list[str]:
    return [w.code for w in found]


def translation_invariant_hessian(atoms: Atoms, k: float = 30.0) -> np.ndarray:
    """Pair-spring Hessian Σ_pairs k·u uᵀ (u the unit bond vector): rows of blocks sum to zero exactly."""
    n = len(atoms)
    h = np.zeros((3 * n, 3 * n))
    for i in range(n):
        for j in range(i + 1, n):
            u = atoms.positions[j] - atoms.positions[i]
            block = k * np.outer(u, u) / (u @ u)
            for a, b, sign in ((i, i, 1), (j, j, 1), (i, j, -1), (j, i, -1)):
                h[3 * a:3 * a + 3, 3 * b:3 * b + 3] += sign * block
    return h


# ---- the record ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoints_report_their_recorded_domain(name, horm_sample_path):
    # configs/data/embedded_horm.yaml: all 90 embedded training geometries and HORM sample entries 0-79
    entries = embedded_entries() + read_horm_entries(range(80))
    numbers = [e.charges.long().tolist() for e in entries]
    with pytest.warns(UserWarning, match="no Hessian readout") if name.startswith("backbone") else nullcontext():
        model = load_checkpoint(SHIPPED[name])
    domain = model.training_domain
    assert domain.known and domain.source == "recorded"
    assert domain.elements == tuple(sorted({z for zs in numbers for z in zs}))
    assert domain.natoms == (min(map(len, numbers)), max(map(len, numbers)))
    assert domain.num_geometries == len(entries) == 170
    assert domain.num_formulas == len({tuple(np.bincount(zs, minlength=10)) for zs in numbers})
    hill = {Atoms(numbers=zs).get_chemical_formula(mode="hill") for zs in numbers}
    assert domain.formulas == tuple(sorted(hill)) and len(hill) == domain.num_formulas
    assert domain.datasets == ("data/embedded/train.lmdb [0-89]", "../shared/horm/sample_100.lmdb [0-79]")
    assert model.hessian_readout_trained is (name == "hip_small") is domain.hessian_readout_trained


def test_record_round_trips_and_malformed_records_name_the_file(tmp_path):
    assert TrainingDomain.from_dict(DOMAIN.to_dict(), "x") == DOMAIN
    torch.manual_seed(0)
    from hip import HIPEquiformerV2

    model = HIPEquiformerV2(**TINY_MODEL)
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": dict(TINY_MODEL)}, "training_domain": {"natoms": [1, 2, 3]}}, path)
    with pytest.raises(CheckpointError, match=r"bad\.ckpt.*training_domain.*natoms"):
        load_checkpoint(path)


def test_training_records_the_train_split_and_export_keeps_it(tmp_path, horm_sample_path):
    from scripts.export_checkpoint import export

    indices = [0, 1, 2, 3, 17]
    numbers = [e.charges.long().tolist() for e in read_horm_entries(indices)]  # before hip opens the shard
    data = HormDataModule(str(horm_sample_path), batch_size=2, train_indices=indices, cache_dir=None, cutoff=6.0,
                          max_neighbors=8, cutoff_hessian=6.0)
    module = HIPModule(model=dict(TINY_MODEL, max_radius=6.0, max_neighbors=8, cutoff_hessian=6.0), mode="e2e",
                       loss_weights={"energy": 1.0, "forces": 1.0})  # energies and forces only: a backbone
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    domain = load_checkpoint(tmp_path / "run.ckpt").training_domain
    assert domain.natoms == (min(map(len, numbers)), max(map(len, numbers)))
    assert domain.elements == tuple(sorted({z for zs in numbers for z in zs}))
    assert domain.num_geometries == 5 and domain.datasets[0].endswith("sample_100.lmdb [0-3,17]")
    assert domain.hessian_readout_trained is False
    # the run's file has readout weights, but they were never trained: the calculator refuses them
    with pytest.raises(ValueError, match="hessian_method='autodiff'"):
        HIPCalculator(tmp_path / "run.ckpt")
    export(tmp_path / "run.ckpt", tmp_path / "exported.ckpt", backbone_only=True)
    with pytest.warns(UserWarning, match="no Hessian readout"):
        exported = load_checkpoint(tmp_path / "exported.ckpt")
    assert exported.training_domain == domain


# ---- untrained readouts --------------------------------------------------------------------------

def test_untrained_readout_refuses_hip_and_says_what_to_use(tmp_path):
    with pytest.warns(UserWarning, match="no Hessian readout"):
        backbone = load_checkpoint(SHIPPED["backbone_ef_small"])
    with pytest.raises(ValueError, match=r"untrained Hessian readout.*hessian_method='autodiff'.*hessian=autodiff"):
        HIPCalculator(backbone)
    calc = HIPCalculator(backbone, hessian_method="autodiff")
    with pytest.raises(ValueError, match="hessian_method='autodiff'"):
        calc.hessian_method = "hip"
    # HORM's format (keys prefixed "potential.", the authors' kwargs) without readout weights
    torch.manual_seed(0)
    from hip import HIPEquiformerV2
    from hip.model.checkpoints import is_hessian_key

    tiny = HIPEquiformerV2(**TINY_MODEL)
    authors = authors_config(tiny)
    torch.save({"state_dict": {f"potential.{k}": v for k, v in tiny.state_dict().items() if not is_hessian_key(k)},
                "hyper_parameters": authors}, tmp_path / "eqv2.ckpt")
    with pytest.warns(UserWarning, match="no Hessian readout"):
        horm = load_checkpoint(tmp_path / "eqv2.ckpt")
    assert not horm.training_domain.known and horm.hessian_readout_trained is False
    with pytest.raises(ValueError, match="HIP checkpoint"):
        HIPCalculator(horm)


# ---- warnings on built cases ---------------------------------------------------------------------

def test_two_fragments_are_named():
    atoms = molecule("H2O") + Atoms("O", positions=[[30.0, 0.0, 0.0]])
    found = domain_warnings(atoms.numbers, atoms.positions, None, None, DOMAIN)
    assert codes(found) == ["fragments"]
    assert "2 covalently disconnected fragments (H2O, O)" in found[0].message
    assert domain_warnings(atoms.numbers[:3], atoms.positions[:3], None, None, DOMAIN) == []


def test_size_and_elements_outside_the_domain():
    big = molecule("CH3CH2OH") + molecule("CH4")  # 14 atoms > 9 (and 2 fragments)
    big.positions[9:] += [0.0, 0.0, 20.0]
    assert codes(domain_warnings(big.numbers, big.positions, None, None, DOMAIN)) == ["natoms", "fragments"]
    assert "14 atoms, outside the training range 3-9" in str(domain_warnings(big.numbers, big.positions, None, None,
                                                                              DOMAIN)[0])
    nh3 = molecule("NH3")
    found = domain_warnings(nh3.numbers, nh3.positions, None, None, DOMAIN)
    assert codes(found) == ["elements"] and "N outside the training set (H, C, O)" in found[0].message
    unknown = domain_warnings(nh3.numbers, nh3.positions, None, None, TrainingDomain(source="HORM's format"))
    assert codes(unknown) == ["domain_unknown"] and "HORM's format" in unknown[0].message


def test_large_forces_are_not_a_stationary_point():
    atoms = molecule("CH3OH")
    forces = np.zeros((len(atoms), 3))
    forces[2] = [0.0, 0.6 * FORCE_THRESHOLD, 0.0]
    assert domain_warnings(atoms.numbers, atoms.positions, forces, None, DOMAIN) == []
    forces[2] = [FORCE_THRESHOLD, FORCE_THRESHOLD, 0.0]  # |F| = √2 × threshold
    found = domain_warnings(atoms.numbers, atoms.positions, forces, None, DOMAIN)
    assert codes(found) == ["forces"]
    assert "not a stationary point: frequencies, ZPE and extremum type are not meaningful" in found[0].message
    assert f"{np.sqrt(2) * FORCE_THRESHOLD:.3g} eV/A" in found[0].message


def test_sum_rule_residual_and_its_warning():
    atoms = molecule("CH3OH")
    h = translation_invariant_hessian(atoms)
    assert np.abs(h.reshape(6, 3, 6, 3).sum(axis=2)).max() < 1e-12 and sum_rule_residual(h) < 1e-12
    assert domain_warnings(atoms.numbers, atoms.positions, None, h, DOMAIN) == []
    h[4, 4] += 2 * SUM_RULE_THRESHOLD  # atom 1, y: its row of blocks now sums to 2·threshold
    assert sum_rule_residual(h) == pytest.approx(2 * SUM_RULE_THRESHOLD)
    found = domain_warnings(atoms.numbers, atoms.positions, None, h, DOMAIN)
    assert codes(found) == ["sum_rule"] and "not translation-invariant" in found[0].message
    with pytest.raises(ValueError, match="expected"):
        sum_rule_residual(np.zeros((4, 4)))


# ---- the calculator with the shipped checkpoint --------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    return HIPCalculator(SHIPPED["hip_small"])


def test_a_stoichiometry_outside_the_training_set_is_named():
    domain = TrainingDomain((1, 6, 8), (3, 20), ("x.lmdb [0-9]",), 10, 2, ("CH4", "H2O"), True, "recorded")
    butane = molecule("trans-butane")
    found = domain_warnings(butane.numbers, butane.positions, None, None, domain)
    assert codes(found) == ["formula"]
    assert found[0].message.startswith("C4H10 is not among the 2 stoichiometries of the training set")
    water = molecule("H2O")
    assert domain_warnings(water.numbers, water.positions, None, None, domain) == []
    unrecorded = domain_warnings(butane.numbers, butane.positions, None, None, DOMAIN)  # DOMAIN lists no formulas
    assert "formula" not in codes(unrecorded)


def test_no_warning_on_a_training_molecule(shipped):
    # CH4 at its G2 geometry (embedded training key 35, variant 0): inside every recorded range
    entry = embedded_entries()[35]
    atoms = Atoms(numbers=entry.charges.long().numpy(), positions=entry.pos.double().numpy())
    assert atoms.get_chemical_formula() == "CH4"
    atoms.calc = shipped
    atoms.get_potential_energy()
    assert shipped.results["warnings"] == [] and atoms.info["hip_warnings"] == []


def test_warnings_reach_results_info_and_predict(shipped):
    far = molecule("H2O") + Atoms("O", positions=[[30.0, 0.0, 0.0]])
    carbons = np.arange(24)[:, None] * np.array([1.27, 0.0, 0.0]) + (np.arange(24) % 2)[:, None] * [0.0, 0.85, 0.0]
    up, down, ends = np.array([0.0, 0.0, 1.09]), np.array([0.0, 0.0, -1.09]), np.array([1.09, 0.0, 0.0])
    hydrogens = np.vstack([carbons + up, carbons + down, carbons[0] - ends, carbons[-1] + ends])
    long = Atoms("C24H50", positions=np.vstack([carbons, hydrogens]))  # above the recorded 3–21 atoms
    far.calc = shipped
    far.get_forces()
    expected = "fragments: 2 covalently disconnected fragments (H2O, O)"
    assert any(w.startswith(expected) for w in shipped.results["warnings"])
    assert far.info["hip_warnings"] == shipped.results["warnings"]
    results = shipped.predict([far.copy(), long], batch_size=2)
    assert results[0]["warnings"] == shipped.results["warnings"]
    assert any(w.startswith("natoms: 74 atoms, outside the training range 3-21") for w in results[1]["warnings"])
    assert long.info["hip_warnings"] == results[1]["warnings"]


def test_messages_survive_an_extxyz_round_trip(tmp_path):
    import ase.io

    atoms = molecule("H2O") + Atoms("O", positions=[[30.0, 0.0, 0.0]])
    forces = np.full((4, 3), 1.0)
    found = domain_warnings(atoms.numbers, atoms.positions, forces, np.eye(12) * 10, DOMAIN)
    assert codes(found) == ["fragments", "forces", "sum_rule"]
    atoms.info["hip_warnings"] = [str(w) for w in found]
    ase.io.write(tmp_path / "w.extxyz", atoms)
    assert ase.io.read(tmp_path / "w.extxyz").info["hip_warnings"] == atoms.info["hip_warnings"]
