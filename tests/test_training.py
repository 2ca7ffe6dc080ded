"""Training entry point and LightningModule: Hydra composition, both modes, frozen parameters."""

from __future__ import annotations

import json
import tokenize
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import CONFIGS, TINY_MODEL, compose_train, write_tiny_checkpoint
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hip.data import HormDataModule
from hip.model.hip_equiformer import HESSIAN_MODULES
from hip.training import HIPModule, module_defaults


@pytest.mark.parametrize("experiment", ["hip_e2e", "hip_frozen", "embedded_demo"])
def test_fast_dev_run(tmp_path, horm_sample_path, experiment):
    from train import train

    overrides = [f"experiment={experiment}", "model=tiny", "trainer.fast_dev_run=2"]
    if experiment == "hip_frozen":
        overrides.append(f"model.backbone_ckpt={write_tiny_checkpoint(tmp_path / 'backbone.ckpt')}")
    if experiment == "embedded_demo":
        overrides.append("data=horm_sample")  # the embedded data's own test is in tests/data
    metrics = train(compose_train(tmp_path, overrides))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "val/hessian_mae" in metrics


def test_frozen_module_without_backbone_checkpoint_says_where_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone_ckpt"):
        HIPModule(model=TINY_MODEL, mode="frozen")
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        HIPModule(model=TINY_MODEL, mode="frozen", backbone_ckpt=str(tmp_path / "missing.ckpt"))


def test_bad_mode_and_loss_weights_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        HIPModule(model=TINY_MODEL, mode="both")
    backbone = str(write_tiny_checkpoint(tmp_path / "backbone.ckpt"))
    with pytest.raises(ValueError, match="frozen mode cannot train energy"):
        HIPModule(model=TINY_MODEL, mode="frozen", backbone_ckpt=backbone,
                  loss_weights={"hessian_mae": 1.0, "forces": 25.0})


def test_frozen_training_changes_only_hessian_parameters(tmp_path, horm_sample_path):
    backbone = str(write_tiny_checkpoint(tmp_path / "backbone.ckpt"))
    module = HIPModule(model=TINY_MODEL, mode="frozen", backbone_ckpt=backbone)
    loaded = torch.load(backbone, weights_only=False)["state_dict"]
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    hessian_prefixes = ("model.hessian", "model.SO3_rotation_hessian")
    backbone_keys = [k.removeprefix("model.") for k in loaded if not k.startswith(hessian_prefixes)]
    assert all(torch.equal(before[k], loaded[f"model.{k}"]) for k in backbone_keys)
    data = HormDataModule(horm_sample_path, val=None, batch_size=2, train_indices=[0, 1, 2, 3], cutoff=12.0,
                          max_neighbors=32, cutoff_hessian=12.0)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, gradient_clip_val=0.1)
    trainer.fit(module, datamodule=data)
    after = module.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(HESSIAN_MODULES) for k in changed), sorted(changed)
    assert not module.model.blocks.training  # the frozen backbone stayed in eval mode


@pytest.mark.slow
def test_two_point_multirun_over_loss_presets(tmp_path, horm_sample_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "train.py"), "-m", "experiment=embedded_demo", "model=tiny", "data=horm_sample",
         "data.train_indices=[0,1]", "data.val_indices=[80]", "data.batch_size=2", "trainer.fast_dev_run=1",
         "evaluate=false", "logger=none", "loss=mae,mse", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, loss in (("0", "loss=mae"), ("1", "loss=mse")):
        assert loss in (tmp_path / job / ".hydra" / "overrides.yaml").read_text()


def test_backbone_cache_is_a_frozen_mode_switch(tmp_path, horm_sample_path):
    """model.backbone_cache_gb caches the frozen backbone's outputs: a second pass over the same molecules
    gives the same loss without running the backbone; end to end it is refused."""
    backbone = str(write_tiny_checkpoint(tmp_path / "backbone.ckpt"))
    module = HIPModule(model=TINY_MODEL, mode="frozen", backbone_ckpt=backbone, backbone_cache_gb=0.1)
    data = HormDataModule(horm_sample_path, batch_size=2, train_indices=[0, 1], cutoff=12.0, max_neighbors=32,
                          cutoff_hessian=12.0)
    batch = next(iter(data.train_dataloader()))
    first = module._step(batch, "val")
    def not_again(*args, **kwargs):
        raise AssertionError("the cached backbone ran again")

    for block in module.model.blocks:
        block.forward = not_again
    assert torch.equal(module._step(batch, "val"), first)
    with pytest.raises(ValueError, match="backbone_cache_gb needs a frozen backbone"):
        HIPModule(model=TINY_MODEL, mode="e2e", backbone_cache_gb=0.1)


def test_plain_fast_dev_run_override_trains_and_evaluates(tmp_path, horm_sample_path):
    """``trainer.fast_dev_run=true`` (no ``+``: configs/trainer lists the key) runs to the end; Lightning
    writes no checkpoint then, so the trained model itself is evaluated, on one molecule."""
    from train import train

    backbone = write_tiny_checkpoint(tmp_path / "backbone.ckpt")
    cfg = compose_train(tmp_path, ["experiment=hip_frozen", "model=tiny", f"model.backbone_ckpt={backbone}",
                                   "trainer.fast_dev_run=true", "evaluate=true", "eval.autodiff=false",
                                   "eval.plots=false", "eval.warmup_molecules=0"])
    assert cfg.trainer.fast_dev_run is True and cfg.evaluate
    train(cfg)
    document = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert document["metadata"]["num_molecules"] == 1 and document["metadata"]["checkpoint"] is None
    assert Path(document["metadata"]["dataset"]).resolve() == horm_sample_path.resolve()


def test_trainer_lists_the_overridden_lightning_keys_with_lightnings_defaults():
    import inspect

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["trainer.limit_train_batches=3", "trainer.precision=64-true"])
    signature = inspect.signature(L.Trainer.__init__).parameters
    default = OmegaConf.load(CONFIGS / "trainer" / "default.yaml")
    for key in ("fast_dev_run", "limit_train_batches", "limit_val_batches", "val_check_interval", "precision",
                "accumulate_grad_batches"):
        assert default[key] == signature[key].default, key
    assert cfg.trainer.limit_train_batches == 3 and cfg.trainer.precision == "64-true"


#: Paper Table 4's optimisation values (AdamW lr 0.0005, betas (0.9, 0.999); StepLR γ 0.85 every 10 HORM
#: epochs = 16,000 steps; clipping 0.1; 500k steps; batch 128; eigen k 8; cutoffs 12 Å).
TABLE4_NUMBERS = {5e-4, 0.9, 0.999, 0.85, 16_000, 0.1, 500_000, 128, 8, 12}
#: Table 4's optimiser and scheduler settings by name: set in Python, they would shadow the configs.
TABLE4_NAMES = {"amsgrad", "weight_decay", "betas", "step_size", "gamma", "AdamW", "StepLR"}


def test_no_table4_literal_in_training_code():
    """The optimiser, schedule and module defaults live in configs/ only: hip/training.py holds none of
    Table 4's values (nor those of the configs that HIPModule falls back on) as code."""
    path = CONFIGS.parent / "hip" / "training.py"
    with path.open() as f:
        tokens = list(tokenize.generate_tokens(f.readline))
    config = OmegaConf.load(CONFIGS / "model" / "hip_equiformer_v2.yaml")
    trainer = OmegaConf.load(CONFIGS / "trainer" / "default.yaml")
    from_configs = {v for spec in (config.optimizer, config.scheduler) for v in spec.values()
                    if isinstance(v, int | float) and not isinstance(v, bool)}
    from_configs |= {*config.optimizer.betas, config.eigen_k, config.hessian_memory_budget_gb,
                     trainer.gradient_clip_val, trainer.max_steps}
    numbers = {float(t.string.replace("_", "")): t.start[0] for t in tokens if t.type == tokenize.NUMBER}
    forbidden = {float(v) for v in TABLE4_NUMBERS | from_configs} - {0.0}  # weight decay 0: by name below
    found = {value: line for value, line in numbers.items() if value in forbidden}
    assert not found, f"{path}: Table 4 / config values as literals (value: line): {found}"
    names = {t.string.strip("'\"") for t in tokens if t.type in (tokenize.NAME, tokenize.STRING)}
    assert not names & TABLE4_NAMES, f"{path} sets {sorted(names & TABLE4_NAMES)}: they belong in configs/"


def test_module_defaults_are_the_configs():
    """HIPModule without settings takes the paper config's optimiser, schedule, k and loss weights."""
    module = HIPModule(model=TINY_MODEL, mode="e2e")
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / "hip_equiformer_v2.yaml"))
    loss = OmegaConf.to_container(OmegaConf.load(CONFIGS / "loss" / "mae_eigen8.yaml"))
    assert module.hparams.optimizer == config["optimizer"] and module.hparams.scheduler == config["scheduler"]
    assert module.hparams.eigen_k == config["eigen_k"] and module.loss_weights == loss
    assert module_defaults()["hessian_memory_budget_gb"] == config["hessian_memory_budget_gb"]
    built = module.configure_optimizers()
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    assert type(optimizer).__name__ == config["optimizer"]["_target_"].rsplit(".", 1)[1]
    group = optimizer.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["amsgrad"], group["weight_decay"]) == (
        config["optimizer"]["lr"], tuple(config["optimizer"]["betas"]), config["optimizer"]["amsgrad"],
        config["optimizer"]["weight_decay"])
    assert (scheduler.step_size, scheduler.gamma) == (config["scheduler"]["step_size"], config["scheduler"]["gamma"])
    assert built["lr_scheduler"]["interval"] == config["scheduler"]["interval"]
    # kwargs without _target_ replace the config's; a spec with _target_ is used as given
    sgd = HIPModule(model=TINY_MODEL, mode="e2e", optimizer={"_target_": "torch.optim.SGD", "lr": 0.5},
                    scheduler={"step_size": 3})
    built = sgd.configure_optimizers()
    assert type(built["optimizer"]).__name__ == "SGD" and built["optimizer"].param_groups[0]["lr"] == 0.5
    assert built["lr_scheduler"]["scheduler"].step_size == 3
    assert built["lr_scheduler"]["scheduler"].gamma == config["scheduler"]["gamma"]
