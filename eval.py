"""Evaluate a checkpoint by the paper's protocol: Tables 1, 3, 9 (HIP and the autodiff Hessian of the same
model) on a data split, one molecule per forward pass, optionally on a seeded random subset.

    python eval.py ckpt_path=ckpt/hip_frozen.ckpt data=horm_t1x eval.device=cuda
    python eval.py ckpt_path=<run dir>/checkpoints/last.ckpt data=horm_sample eval.autodiff=false
    python eval.py ckpt_path=... data=horm_t1x eval.max_molecules=1000 eval.subset_seed=42 eval.device=cuda

Writes metrics.json, per_molecule.csv, tables.txt and plots to the run directory
(``paths.output_dir``) and prints Tables 1, 3 and 9; see :mod:`hip.evaluation`.
"""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig

from hip.training import instantiate_datamodule, register_resolvers

register_resolvers()


def run(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Load the checkpoint, build the datamodule at its graph settings, evaluate (see ``main``).

    Raises:
        FileNotFoundError: ``cfg.ckpt_path`` does not exist.
        CheckpointError: it cannot be read, is refused (``trusted_checkpoint=true`` loads a trusted
            file anyway, unsafely), or does not fit the model.
    """
    from hip.evaluation import evaluate_checkpoint, resolve_device
    from hip.model.checkpoints import load_checkpoint

    torch.manual_seed(cfg.seed)  # the model's random edge-frame roll
    device = resolve_device(cfg.eval.device)
    model = load_checkpoint(cfg.ckpt_path, map_location=device, trusted=cfg.trusted_checkpoint)
    datamodule = instantiate_datamodule(cfg.data, model)
    return evaluate_checkpoint(
        cfg.ckpt_path, datamodule, cfg.paths.output_dir, split=cfg.eval.split, autodiff=cfg.eval.autodiff,
        autodiff_chunk_size=cfg.eval.autodiff_chunk_size, max_molecules=cfg.eval.max_molecules,
        plots=cfg.eval.plots, device=device, model=model, subset_seed=cfg.eval.subset_seed,
        negative_eigenvalue_threshold=cfg.eval.negative_eigenvalue_threshold,
        warmup_molecules=cfg.eval.warmup_molecules)


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: ``python eval.py ckpt_path=<checkpoint> [data=...] [eval.key=value ...]``.

    A checkpoint that is missing, unreadable or refused ends the run with its message (exit status 1),
    not a traceback."""
    from hip.cli import user_errors
    from hip.model.checkpoints import CheckpointError

    with user_errors("eval.py", (CheckpointError, FileNotFoundError)):
        run(cfg)


if __name__ == "__main__":
    main()
