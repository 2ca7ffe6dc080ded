"""Train HIP-EquiformerV2 (Hydra + Lightning), then evaluate the best checkpoint (Table 1 block).

    python train.py experiment=embedded_demo   # the README's main job (small model, 2 CPU cores)
    python train.py experiment=hip_frozen      # paper §4: Hessian readout on HORM's frozen backbone
    python train.py experiment=hip_e2e data=horm_t1x trainer=gpu
    python train.py -m experiment=embedded_demo loss=mae,mse,mae_eigen8   # Table 6 sweep
    python train.py experiment=embedded_demo ckpt_path=last hydra.run.dir=<run dir>   # resume
    python train.py experiment=embedded_demo trainer=ddp_cpu   # 2 CPU processes (DDP, gloo)

Resuming (``ckpt_path=last``) restores weights, optimiser, LR schedule, step and epoch counters,
the training loader's position within the epoch and the RNG states, from
``<run dir>/checkpoints/last.ckpt`` (written every ``callbacks.model_checkpoint.every_n_train_steps``
steps when set, and at every epoch end); without that file the run starts fresh, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from hip.training import instantiate_datamodule, instantiate_list, register_resolvers, unwrapped

register_resolvers()
log = logging.getLogger(__name__)


def setup(cfg: DictConfig) -> tuple[Any, Any, L.Trainer, dict[str, Any] | None]:
    """The model, data module and trainer of ``cfg``, and the checked post-training ``eval`` settings
    (None when ``evaluate=false``).

    Raises:
        ValueError: a bad ``data.*`` or ``eval.*`` option; FileNotFoundError, CheckpointError: a
            backbone checkpoint that is missing, unreadable or refused.
    """
    from hip.evaluation import eval_settings

    settings = eval_settings(cfg.eval) if cfg.evaluate else None
    L.seed_everything(cfg.seed, workers=True)
    with unwrapped("the model (config group model)"):
        # not recursive: the optimiser and scheduler specs are built in configure_optimizers
        module = hydra.utils.instantiate(cfg.model, _convert_="all", _recursive_=False)
    datamodule = instantiate_datamodule(cfg.data, module.model)
    with unwrapped("the trainer (config groups trainer, callbacks, logger)"):
        trainer: L.Trainer = hydra.utils.instantiate(
            cfg.trainer, callbacks=instantiate_list(cfg.get("callbacks")), logger=instantiate_list(cfg.get("logger")))
    return module, datamodule, trainer, settings


def fit(cfg: DictConfig, module, datamodule, trainer: L.Trainer, settings: dict[str, Any] | None) -> dict[str, float]:
    """Fit; then, with ``settings``, evaluate the best checkpoint (the trained model itself when no
    checkpoint was written, as in ``trainer.fast_dev_run``). Returns the final callback metrics."""
    ckpt_path = cfg.ckpt_path
    if ckpt_path == "last":
        ckpt_path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if ckpt_path.is_file():
            log.info("resuming from %s", ckpt_path)
        else:  # the first run of a job that may be resubmitted with the same command
            log.warning("ckpt_path=last: %s does not exist, starting from scratch", ckpt_path)
            ckpt_path = None
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if settings is not None and trainer.is_global_zero:  # once, not on every DDP process
        evaluate_after_training(cfg, module, datamodule, trainer, settings)
    return metrics


def evaluate_after_training(cfg: DictConfig, module, datamodule, trainer: L.Trainer, settings: dict[str, Any]) -> None:
    """Evaluate the best checkpoint by the monitored metric, else the last one, into ``<run dir>/eval``.

    Without a checkpoint (``trainer.fast_dev_run`` writes none, nor does a run with checkpointing
    off) the trained model in memory is evaluated, under fast_dev_run on as many molecules as it ran
    batches, and a warning says so."""
    from hip.evaluation import evaluate_checkpoint

    callbacks = sorted(trainer.checkpoint_callbacks, key=lambda c: c.monitor is None)
    best = next((p for c in callbacks for p in (c.best_model_path, c.last_model_path) if p), None)
    output_dir = Path(cfg.paths.output_dir) / "eval"
    if best:
        evaluate_checkpoint(best, datamodule, output_dir, **settings)
        return
    if trainer.fast_dev_run:
        molecules = int(trainer.fast_dev_run)  # True: 1
        settings = settings | {"max_molecules": min(molecules, settings["max_molecules"] or molecules)}
    log.warning("no checkpoint was written (fast_dev_run or checkpointing off): evaluating the trained model "
                "in memory on %s molecules", settings["max_molecules"] or "all")
    evaluate_checkpoint(None, datamodule, output_dir, model=module.model, **settings)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model; returns the final callback metrics (and evaluates, if asked)."""
    return fit(cfg, *setup(cfg))


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point. A bad option or a missing, unreadable or refused checkpoint (backbone or
    ``ckpt_path``) ends the run with its one-line message (exit status 1), not a traceback."""
    from hip.cli import user_errors
    from hip.model.checkpoints import CheckpointError

    with user_errors("train.py", (CheckpointError, FileNotFoundError, ValueError)):
        prepared = setup(cfg)
    with user_errors("train.py", (CheckpointError, FileNotFoundError)):
        return fit(cfg, *prepared).get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
