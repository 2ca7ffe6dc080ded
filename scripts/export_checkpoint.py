"""Write a training run's checkpoint as a small, weights-only model file (the files shipped in ckpt/).

Keeps the model weights and config (our format: ``state_dict`` with ``model.`` keys and
``hyper_parameters["model"]``) and drops the optimiser, schedule, loop and RNG states, which only a
resumed run needs. ``--backbone-only`` also drops the Hessian readout, so that the file is a backbone
(loading it warns that its Hessian head is untrained). The file is written atomically.

    python scripts/export_checkpoint.py logs/shipped/hip_small/checkpoints ckpt/hip_small.ckpt
    python scripts/export_checkpoint.py <run>/checkpoints/last.ckpt ckpt/backbone_ef_small.ckpt --backbone-only
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hip.model.checkpoints import HESSIAN_CONFIG_KEYS, is_hessian_key, read_checkpoint
from hip.training import AtomicCheckpointIO


def best_checkpoint(source: Path) -> Path:
    """``source`` itself, or for a run's ``checkpoints`` folder the best-epoch file ModelCheckpoint kept.

    Raises:
        FileNotFoundError: the folder holds no ``epoch_*.ckpt`` (or several: ambiguous).
    """
    if not source.is_dir():
        return source
    best = sorted(source.glob("epoch_*.ckpt"))
    if len(best) != 1:
        raise FileNotFoundError(f"{source}: expected exactly one best checkpoint epoch_*.ckpt, found "
                                f"{[p.name for p in best]}; pass the file itself")
    return best[0]


def export(source: Path, target: Path, backbone_only: bool = False) -> dict:
    """Write ``source``'s weights and model config to ``target``; returns the written dict."""
    source = best_checkpoint(source)
    config, state_dict = read_checkpoint(source)
    if backbone_only:
        state_dict = {k: v for k, v in state_dict.items() if not is_hessian_key(k)}
        config = {k: v for k, v in config.items() if k not in HESSIAN_CONFIG_KEYS}
    checkpoint = {"state_dict": {f"model.{k}": v.contiguous() for k, v in state_dict.items()},
                  "hyper_parameters": {"model": config}, "exported_from": str(source)}
    AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a checkpoint, or a run's checkpoints/ folder (its best epoch)")
    parser.add_argument("target", type=Path, help="the file to write, e.g. ckpt/hip_small.ckpt")
    parser.add_argument("--backbone-only", action="store_true", help="drop the Hessian readout")
    args = parser.parse_args(argv)
    checkpoint = export(args.source, args.target, args.backbone_only)
    size = args.target.stat().st_size / 2**20
    print(f"wrote {args.target} ({size:.2f} MiB, {len(checkpoint['state_dict'])} tensors) from "
          f"{checkpoint['exported_from']}")


if __name__ == "__main__":
    main()
