"""StepLR of paper Table 4 as HORM and the HIP authors run it: lr · γ^⌊k / step_size⌋ after k scheduler steps,
k counting optimiser steps (HORM data) or epochs (the embedded demo)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from helpers import TINY_MODEL
from hydra import compose, initialize_config_dir

from hip.data import HormDataModule
from hip.training import HIPModule, register_resolvers

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: Three of the smallest sample molecules (8–9 atoms), one per batch: 3 optimiser steps per epoch.
INDICES = [83, 41, 82]


class LearningRates(L.Callback):
    """The learning rate each optimiser step uses (read before the step)."""

    def __init__(self):
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize(("interval", "step_size"), [("step", 2), ("epoch", 1)])
def test_learning_rate_follows_the_closed_form(horm_sample_path, interval, step_size):
    lr, gamma, epochs = 1e-3, 0.5, 2
    module = HIPModule(model=TINY_MODEL, mode="e2e", loss_weights={"hessian_mae": 1.0}, optimizer={"lr": lr},
                       scheduler={"interval": interval, "step_size": step_size, "gamma": gamma})
    data = HormDataModule(horm_sample_path, batch_size=1, train_indices=INDICES, exclude_elements=(),
                          cutoff=module.model.max_radius, max_neighbors=module.model.max_neighbors,
                          cutoff_hessian=module.model.cutoff_hessian, cache_dir=None)
    recorder = LearningRates()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder])
    trainer.fit(module, datamodule=data)
    steps = range(epochs * len(INDICES))
    scheduler_steps = [k if interval == "step" else k // len(INDICES) for k in steps]
    assert recorder.rates == pytest.approx([lr * gamma ** (n // step_size) for n in scheduler_steps], rel=1e-12)


def test_paper_schedule_in_the_configs():
    """HORM data: γ = 0.85 every 16,000 optimiser steps (10 "epochs" of 1600 batches), 31 decays in the
    500k steps of Table 4; the embedded demo decays per epoch."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        paper = compose("train", overrides=["experiment=hip_e2e"])
        demo = compose("train", overrides=["experiment=embedded_demo"])
    schedule = paper.model.scheduler
    assert (schedule.interval, schedule.step_size, schedule.gamma) == ("step", 10 * 1600, 0.85)
    assert paper.trainer.max_steps // schedule.step_size == 31
    assert demo.model.scheduler.interval == "epoch"


def test_unknown_interval_is_rejected():
    module = HIPModule(model=TINY_MODEL, mode="e2e", scheduler={"interval": "batch"})
    with pytest.raises(ValueError, match=r"model\.scheduler\.interval"):
        module.configure_optimizers()
