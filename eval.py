"""Evaluate a checkpoint by the paper's protocol: Tables 1, 3, 9 (HIP and the autodiff Hessian of the same
model) on a data split, one molecule per forward pass, optionally on a seeded random subset.

    python eval.py ckpt_path=ckpt/hip_frozen.ckpt data=horm_t1x eval.device=cuda
    python eval.py ckpt_path=<run dir>/checkpoints/last.ckpt data=horm_sample eval.autodiff=false
    python eval.py ckpt_path=... data=horm_t1x eval.max_molecules=1000 eval.subset_seed=42 eval.device=cuda

Writes metrics.json, per_molecule.csv, tables.txt and plots to the run directory
(``paths.output_dir``) and prints Tables 1, 3 and 9; see :mod:`hip.evaluation`.
"""

from __future__ import annotations

from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from hip.training import instantiate_datamodule, register_resolvers

register_resolvers()


def prepare(cfg: DictConfig) -> tuple[dict[str, Any], Any, Any]:
    """The checked ``eval`` settings, the loaded checkpoint and the datamodule at its graph settings.

    Raises:
        ValueError: a bad ``eval.*`` or ``data.*`` option (one line naming it, e.g. ``eval.device=gpu``).
        FileNotFoundError: ``cfg.ckpt_path`` does not exist.
        CheckpointError: it cannot be read, is refused (``trusted_checkpoint=true`` loads a trusted
            file anyway, unsafely), or does not fit the model.
    """
    from hip.evaluation import eval_settings
    from hip.model.checkpoints import load_checkpoint

    settings = eval_settings(cfg.eval)
    torch.manual_seed(cfg.seed)  # the model's random edge-frame roll
    model = load_checkpoint(cfg.ckpt_path, map_location=settings["device"], trusted=cfg.trusted_checkpoint)
    if cfg.get("model", {}).get("compile", False):
        model.set_compiled(True)
    return settings, model, instantiate_datamodule(cfg.data, model)


def evaluate(cfg: DictConfig, settings: dict[str, Any], model, datamodule) -> dict[str, dict[str, float]]:
    """Evaluate what :func:`prepare` returned; write the files to ``paths.output_dir``."""
    from hip.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(cfg.ckpt_path, datamodule, cfg.paths.output_dir, model=model, **settings)


def run(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """:func:`prepare` then :func:`evaluate` (see ``main``); raises what they raise."""
    return evaluate(cfg, *prepare(cfg))


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: ``python eval.py ckpt_path=<checkpoint> [data=...] [eval.key=value ...]``.

    A bad option, or a checkpoint that is missing, unreadable or refused, ends the run with its
    one-line message (exit status 1), not a traceback."""
    from hip.cli import user_errors
    from hip.model.checkpoints import CheckpointError

    with user_errors("eval.py", (CheckpointError, FileNotFoundError, ValueError)):
        prepared = prepare(cfg)
    with user_errors("eval.py", (CheckpointError, FileNotFoundError)):
        evaluate(cfg, *prepared)


if __name__ == "__main__":
    main()
