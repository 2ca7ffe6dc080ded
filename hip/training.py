"""The LightningModule: HIP training with a frozen backbone (``hip_frozen``) or end to end (``hip_e2e``).

Losses are paper §3.3 (eq. 8, 9) with weights from config; the optimiser and schedule are paper
Table 4 (AdamW lr 5e-4, betas (0.9, 0.999), AMSGrad, no weight decay; StepLR every 10 epochs,
γ = 0.85). Gradient clipping (0.1, norm) is the trainer's job (``configs/trainer``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from hip.losses import hip_loss
from hip.model.checkpoints import load_backbone_weights
from hip.model.hip_equiformer import HIPEquiformerV2


class HIPModule(L.LightningModule):
    """Trains :class:`HIPEquiformerV2`.

    Args:
        model: :class:`HIPEquiformerV2` kwargs (Table 4 defaults in ``configs/model``).
        mode: ``"frozen"`` trains only the Hessian readout on a fixed backbone, which runs in
            eval mode without autograd; ``"e2e"`` trains everything.
        loss_weights: weights of ``hessian_mae``, ``hessian_mse``, ``eigen_subspace``, ``energy``
            and ``forces`` (see :func:`hip.losses.hip_loss`); energy and forces must be 0 in frozen
            mode, where they cannot train.
        eigen_k: k of the eigen-subspace loss (paper: 8).
        optimizer: AdamW kwargs (``lr``, ``betas``, ``amsgrad``, ``weight_decay``).
        scheduler: StepLR kwargs (``step_size`` in epochs, ``gamma``).
        backbone_ckpt: checkpoint whose backbone and energy/force heads initialise the model (any
            format of :mod:`hip.model.checkpoints`); required in frozen mode.
        hessian_memory_budget_gb: refuse batches whose Hessian tensors (prediction, label,
            gradient, eigen-loss padding) would exceed this many GiB.

    Raises:
        ValueError: bad mode or loss weights.
        FileNotFoundError: frozen mode without a backbone checkpoint file.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        mode: Literal["frozen", "e2e"] = "frozen",
        loss_weights: Mapping[str, float] | None = None,
        eigen_k: int = 8,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        backbone_ckpt: str | None = None,
        hessian_memory_budget_gb: float = 8.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if mode not in ("frozen", "e2e"):
            raise ValueError(f"mode must be 'frozen' or 'e2e', got {mode!r}")
        self.loss_weights = dict(loss_weights or {"hessian_mae": 1.0, "eigen_subspace": 1.0})
        if mode == "frozen" and any(self.loss_weights.get(k, 0) for k in ("energy", "forces")):
            raise ValueError("frozen mode cannot train energy or forces: set their loss weights to 0")
        self.model = HIPEquiformerV2(**model)
        if backbone_ckpt:
            load_backbone_weights(self.model, backbone_ckpt)
        elif mode == "frozen":
            raise FileNotFoundError("frozen mode needs model.backbone_ckpt=<checkpoint> (see ckpt/README.md)")
        if mode == "frozen":
            self.model.freeze_backbone()

    def forward(self, batch) -> dict[str, torch.Tensor]:
        return self.model(batch)

    def _check_memory(self, batch) -> None:
        natoms = batch.natoms
        entries = int((9 * natoms**2).sum()) * 3 + len(natoms) * 9 * int(natoms.max()) ** 2
        needed = entries * batch.pos.element_size() / 2**30
        if needed > self.hparams.hessian_memory_budget_gb:
            raise MemoryError(f"a batch of {len(natoms)} molecules (up to {int(natoms.max())} atoms) needs about "
                              f"{needed:.1f} GiB of Hessian tensors, over the budget of "
                              f"{self.hparams.hessian_memory_budget_gb} GiB: use a smaller data.batch_size "
                              "or raise model.hessian_memory_budget_gb")

    def _step(self, batch, stage: str) -> torch.Tensor:
        self._check_memory(batch)
        terms = hip_loss(self.model(batch), batch, self.loss_weights, eigen_k=self.hparams.eigen_k)
        if not torch.isfinite(terms["loss"]):
            molecules = batch.dataset_idx.tolist() if "dataset_idx" in batch else "unknown"
            raise FloatingPointError(f"{stage} loss is {terms['loss'].item()} at step {self.global_step}; "
                                     f"the batch holds dataset indices {molecules}; terms: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()))
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=batch.num_graphs,
                      prog_bar=stage == "train", sync_dist=stage != "train", on_epoch=True,
                      on_step=stage == "train")
        return terms["loss"]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_epoch=True, on_step=False)

    def configure_optimizers(self):
        options = {"lr": 5e-4, "betas": (0.9, 0.999), "amsgrad": True, "weight_decay": 0.0,
                   **(self.hparams.optimizer or {})}
        options["betas"] = tuple(options["betas"])
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, **options)
        schedule = {"step_size": 10, "gamma": 0.85, **(self.hparams.scheduler or {})}
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, **schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def register_resolvers() -> None:
    """OmegaConf resolvers used by the configs: ``${wandb_offline:}`` is true without an API key;
    ``${range:a,b}`` is the list of indices a … b−1 (dataset subsets)."""
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", lambda: not os.environ.get("WANDB_API_KEY"))
    if not OmegaConf.has_resolver("range"):
        OmegaConf.register_new_resolver("range", lambda start, stop: list(range(int(start), int(stop))))


def instantiate_list(configs: DictConfig | None) -> list:
    """Instantiate every entry of a Hydra group like ``callbacks`` or ``logger`` (may be empty)."""
    return [hydra.utils.instantiate(c) for c in (configs or {}).values() if c and "_target_" in c]


def instantiate_datamodule(config: DictConfig, model: HIPEquiformerV2):
    """The datamodule of ``config`` with graphs built at ``model``'s cutoffs and neighbour cap."""
    return hydra.utils.instantiate(config, cutoff=model.max_radius, max_neighbors=model.max_neighbors,
                                   cutoff_hessian=model.cutoff_hessian, _convert_="all")
