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
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning as L
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from hip.training import instantiate_datamodule, instantiate_list, register_resolvers

register_resolvers()
log = logging.getLogger(__name__)


@contextmanager
def _unwrapped(what: str):
    """Re-raise what a constructor raised (a CheckpointError listing keys, a FileNotFoundError …)
    instead of Hydra's InstantiationException, which shows it as a one-line repr."""
    try:
        yield
    except InstantiationException as e:
        if e.__cause__ is None:
            raise
        e.__cause__.add_note(f"(raised while instantiating {what} with Hydra)")
        raise e.__cause__ from None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model; returns the final callback metrics (and evaluation, if asked)."""
    L.seed_everything(cfg.seed, workers=True)
    with _unwrapped("the model (config group model)"):
        module = hydra.utils.instantiate(cfg.model, _convert_="all")
    with _unwrapped("the data module (config group data)"):
        datamodule = instantiate_datamodule(cfg.data, module.model)
    with _unwrapped("the trainer (config groups trainer, callbacks, logger)"):
        trainer: L.Trainer = hydra.utils.instantiate(
            cfg.trainer, callbacks=instantiate_list(cfg.get("callbacks")), logger=instantiate_list(cfg.get("logger")))
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
    # the best checkpoint by the monitored metric, else the last one
    callbacks = sorted(trainer.checkpoint_callbacks, key=lambda c: c.monitor is None)
    best = next((p for c in callbacks for p in (c.best_model_path, c.last_model_path) if p), None)
    if cfg.evaluate and best and trainer.is_global_zero:  # once, not on every DDP process
        from hip.evaluation import evaluate_checkpoint

        evaluate_checkpoint(best, datamodule, Path(cfg.paths.output_dir) / "eval")
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point. A missing, unreadable or refused checkpoint (backbone or ``ckpt_path``) ends
    the run with its message (exit status 1), not a traceback."""
    from hip.cli import user_errors
    from hip.model.checkpoints import CheckpointError

    with user_errors("train.py", (CheckpointError, FileNotFoundError)):
        return train(cfg).get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
