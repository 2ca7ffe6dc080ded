"""Out of the box: the shipped checkpoints, the default commands, and frozen mode on any backbone."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL, compose_train, write_tiny_checkpoint
from hydra import compose, initialize_config_dir

from hip import collate_molecules, load_checkpoint, split_hessian
from hip.data import HormDataset
from hip.model.checkpoints import HESSIAN_CONFIG_KEYS, read_checkpoint
from hip.training import HIPModule

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "ckpt"
SHIPPED = ("backbone_ef_small.ckpt", "hip_small.ckpt")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoints_are_small_weights_only_files(name):
    path = CKPT / name
    assert path.stat().st_size <= 5 * 2**20
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert set(checkpoint) >= {"state_dict", "hyper_parameters"} and "optimizer_states" not in checkpoint
    _, state_dict = read_checkpoint(path)
    has_readout = any(k.startswith("hessian_layers.") for k in state_dict)
    assert has_readout == (name == "hip_small.ckpt")


def _held_out_errors(model, shard: Path, indices) -> dict[str, float]:
    """Per-molecule-averaged Hessian, force and energy MAE of ``model`` on a HORM shard, computed here
    with plain tensor code (the recorded numbers come from eval.py)."""
    dataset = HormDataset(shard, model.graph_builder(), indices=indices)
    hessian, forces, energy = [], [], []
    for i in range(len(dataset)):
        entry = dataset.read(i)
        z, pos = entry["z"], entry["pos"]
        batch = collate_molecules([(z, pos)], model.graph_builder())
        with torch.no_grad():
            out = model(batch, hessian=any(k.startswith("hessian_layers.") for k in model.state_dict()))
        n = len(z)
        if "hessian" in out:
            h_pred = split_hessian(out["hessian"], batch.natoms)[0]
            hessian.append((h_pred - entry["hessian"].reshape(3 * n, 3 * n)).abs().mean().item())
        forces.append((out["forces"] - entry["forces"]).abs().mean().item())
        energy.append((out["energy"][0] - entry["ae"]).abs().item())
    errors = {"forces_mae": sum(forces) / len(forces), "energy_mae": sum(energy) / len(energy)}
    if hessian:
        errors["hessian_mae"] = sum(hessian) / len(hessian)
    return errors


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.slow
def test_shipped_checkpoints_reproduce_their_recorded_held_out_metrics(name, horm_sample_path):
    """ckpt/metrics.json (from eval.py, see ckpt/README.md) holds each file's held-out errors."""
    recorded = json.loads((CKPT / "metrics.json").read_text())[name]
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="no Hessian readout") if name.startswith("backbone") else nullcontext():
        model = load_checkpoint(CKPT / name)
    sets = {"embedded_val": (ROOT / "data" / "embedded" / "val.lmdb", None),
            "horm_sample_val": (horm_sample_path, range(80, 100))}
    for split, (shard, indices) in sets.items():
        errors = _held_out_errors(model, shard, indices)
        for key, value in recorded[split].items():
            assert errors[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (split, key)


def test_train_py_without_arguments_is_the_main_job():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train")
    assert cfg.task_name == "embedded_demo" and cfg.model.mode == "e2e"


def test_hip_frozen_defaults_to_the_shipped_backbone(tmp_path, caplog):
    """`python train.py experiment=hip_frozen` without HORM's eqv2.ckpt trains on ckpt/backbone_ef_small.ckpt."""
    from train import train

    if (CKPT / "eqv2.ckpt").exists():
        pytest.skip("HORM's eqv2.ckpt is present: it is the default backbone then")
    cfg = compose_train(tmp_path, ["experiment=hip_frozen", "trainer.fast_dev_run=1"])
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    assert "val/hessian_mae" in metrics
    assert "backbone_ef_small.ckpt" in caplog.text and "eqv2.ckpt not found" in caplog.text


@pytest.mark.slow
def test_frozen_mode_reads_the_backbone_architecture_from_its_checkpoint(tmp_path, horm_sample_path):
    """A tiny backbone under the paper-size model config: the backbone is the checkpoint's, the readout
    settings the config's, and the run's checkpoint rebuilds that model."""
    from train import train

    backbone = write_tiny_checkpoint(tmp_path / "tiny.ckpt")
    cfg = compose_train(tmp_path, ["experiment=hip_frozen", "model=hip_equiformer_v2",
                                   f"model.backbone_ckpt={backbone}", "model.model.num_layers_hessian=2",
                                   "trainer.fast_dev_run=1"])
    train(cfg)
    config, state_dict = read_checkpoint(backbone)
    module = HIPModule(**{k: v for k, v in cfg.model.items() if k != "_target_"})
    expected = {**config, "num_layers_hessian": 2, "cutoff_hessian": cfg.model.model.cutoff_hessian}
    assert module.model.config == expected
    assert module.hparams["model"] == expected and module.hparams["backbone_ckpt"] == str(backbone)
    assert all(torch.equal(module.model.state_dict()[k], v) for k, v in state_dict.items()
               if not k.startswith(("hessian", "SO3_rotation_hessian", "distance_expansion_hessian")))


def test_backbone_candidates_first_existing_file_wins(tmp_path, caplog):
    backbone = str(write_tiny_checkpoint(tmp_path / "b.ckpt"))
    missing = str(tmp_path / "eqv2.ckpt")
    readout = {k: TINY_MODEL[k] for k in HESSIAN_CONFIG_KEYS if k in TINY_MODEL}
    with caplog.at_level(logging.WARNING):
        module = HIPModule(model=readout, mode="frozen", backbone_ckpt=[missing, backbone])
    assert module.hparams["backbone_ckpt"] == backbone and "eqv2.ckpt not found" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"eqv2\.ckpt or .*nope\.ckpt"):
        HIPModule(model=readout, mode="frozen", backbone_ckpt=[missing, str(tmp_path / "nope.ckpt")])


def test_energy_force_training_does_not_run_the_hessian_readout(horm_sample_path):
    """The paper's "EquiformerV2 (E-F)" backbone: no Hessian term, no Hessian forward, no readout gradient."""
    module = HIPModule(model=TINY_MODEL, mode="e2e", loss_weights={"energy": 1.0, "forces": 25.0})
    dataset = HormDataset(horm_sample_path, module.model.graph_builder(), indices=[0, 1])
    from hip.data.graphs import collate

    batch = collate([dataset[0], dataset[1]])
    calls = []
    module.model._hessian = lambda *a: calls.append(a)  # would fail the step if it were called
    module._step(batch, "train").backward()
    assert not calls
    assert all(p.grad is None for p in module.model.hessian_parameters())
    assert any(p.grad is not None for p in module.model.blocks.parameters())


@pytest.mark.slow
def test_eval_py_without_arguments_evaluates_the_shipped_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "eval.py"), "eval.max_molecules=2", "eval.plots=false",
                             f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HIP" in result.stdout and "AD" in result.stdout
    assert (tmp_path / "metrics.json").is_file()
