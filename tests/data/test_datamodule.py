"""HormDataModule on the sample shard: splits, subsets, loaders, and a short Lightning fit."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import HORM_SAMPLE

from hip.data import HormDataModule

SAMPLE = HORM_SAMPLE
#: Graph settings (Å, count, Å): required arguments of the data module, normally the model's.
GRAPHS = dict(cutoff=12.0, max_neighbors=32, cutoff_hessian=12.0)
pytestmark = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"HORM sample shard {SAMPLE} not available")


def test_splits_subsets_and_batches():
    dm = HormDataModule(SAMPLE, val=SAMPLE, batch_size=8, train_indices=24, val_indices=range(90, 100),
                        **GRAPHS | {"max_neighbors": 6}, seed=1)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 24 and len(dm.dataset("val")) == 10
    assert dm.dataset("test") is None and dm.test_dataloader() == []
    train = list(dm.train_dataloader())
    assert [b.num_graphs for b in train] == [8, 8, 8]
    idx = torch.cat([b.dataset_idx for b in train])
    assert sorted(idx.tolist()) == list(range(24)) and idx.tolist() != list(range(24))  # shuffled
    # the shuffle is reproducible from the seed
    again = HormDataModule(SAMPLE, batch_size=8, train_indices=24, seed=1, **GRAPHS)
    assert torch.equal(torch.cat([b.dataset_idx for b in again.train_dataloader()]), idx)
    val = list(dm.val_dataloader())
    assert torch.equal(torch.cat([b.dataset_idx for b in val]), torch.arange(90, 100))  # in order
    b = train[0]
    assert (torch.bincount(b.edge_index[1], minlength=b.num_nodes) <= 6).all()  # graph settings reach
    assert b.hessian.numel() == int(((3 * b.natoms) ** 2).sum())


def test_workers_are_persistent():
    dm = HormDataModule(SAMPLE, batch_size=8, num_workers=2, train_indices=16, **GRAPHS)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    for _ in range(2):  # two epochs through the same workers
        assert sorted(torch.cat([b.dataset_idx for b in loader]).tolist()) == list(range(16))


class _Mean(L.LightningModule):
    """Smallest module that consumes HORM batches: fits one number to the batch's mean ae."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, _):
        return (self.w - batch.ae.mean()) ** 2

    def validation_step(self, batch, _):
        self.log("val", (self.w - batch.ae.mean()) ** 2, batch_size=batch.num_graphs)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")  # no val loader
@pytest.mark.parametrize("with_val", [True, False])
def test_lightning_fit(tmp_path, with_val):
    dm = HormDataModule(SAMPLE, val=SAMPLE if with_val else None, batch_size=4, train_indices=8,
                        val_indices=4, **GRAPHS)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_Mean(), datamodule=dm)
    assert trainer.global_step == 2
    assert ("val" in trainer.callback_metrics) == with_val


def test_graph_settings_are_required_and_options_checked():
    with pytest.raises(TypeError, match="cutoff"):
        HormDataModule(SAMPLE, batch_size=8)
    for key, value in (("batch_size", "abc"), ("batch_size", 0), ("num_workers", -1), ("batch_size", True)):
        with pytest.raises(ValueError, match=rf"data\.{key}={value!r}: expected an integer"):
            HormDataModule(SAMPLE, **{"batch_size": 8, key: value}, **GRAPHS)


def test_instantiate_datamodule_passes_the_models_graph_settings():
    """train.py / eval.py build the data module at the model's cutoffs and cap; a data config that sets
    them is refused (they would be silently replaced)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from hip.training import instantiate_datamodule

    model = SimpleNamespace(max_radius=4.5, max_neighbors=7, cutoff_hessian=33.0)
    config = OmegaConf.create({"_target_": "hip.data.HormDataModule", "train": str(SAMPLE), "batch_size": 2})
    builder = instantiate_datamodule(config, model).graph_builder
    assert (builder.cutoff, builder.max_neighbors, builder.cutoff_hessian) == (4.5, 7, 33.0)
    with pytest.raises(ValueError, match=r"data\.max_neighbors is set in the data config.*max_neighbors 7"):
        instantiate_datamodule(OmegaConf.merge(config, {"max_neighbors": 20}), model)
    with pytest.raises(ValueError, match=r"data\.batch_size='x'"):  # not Hydra's InstantiationException
        instantiate_datamodule(OmegaConf.merge(config, {"batch_size": "x"}), model)
