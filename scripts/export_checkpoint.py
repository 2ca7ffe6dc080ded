"""Write a training run's checkpoint as a small, weights-only model file (the files shipped in ckpt/).

Keeps the model weights and config (our format: ``state_dict`` with ``model.`` keys and
``hyper_parameters["model"]``) and the training-domain record (``training_domain``,
:class:`hip.domain.TrainingDomain`), and drops the optimiser, schedule, loop and RNG states, which
only a resumed run needs. ``--backbone-only`` also drops the Hessian readout, so that the file is a
backbone (loading it warns that its Hessian head is untrained; the record says so too). ``--data``
records the domain of a data config's training split, for a checkpoint written before training
recorded it (the shipped files were re-exported this way). The file is written atomically.

    python scripts/export_checkpoint.py logs/shipped/hip_small/checkpoints ckpt/hip_small.ckpt
    python scripts/export_checkpoint.py <run>/checkpoints/last.ckpt ckpt/backbone_ef_small.ckpt --backbone-only
    python scripts/export_checkpoint.py ckpt/hip_small.ckpt ckpt/hip_small.ckpt --data embedded_horm
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from hip.domain import TrainingDomain, domain_of_dataset
from hip.model.checkpoints import HESSIAN_CONFIG_KEYS, is_hessian_key, read_checkpoint_and_domain
from hip.safe_loading import safe_torch_load
from hip.training import AtomicCheckpointIO, register_resolvers

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


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


def data_config_domain(data: str, hessian_readout_trained: bool) -> TrainingDomain:
    """The :class:`TrainingDomain` of the training split of ``configs/data/<data>.yaml`` (as train.py builds it).

    Raises:
        hydra's MissingConfigException: no such data config; FileNotFoundError: a shard is missing.
    """
    import hydra
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={data}"])
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    return domain_of_dataset(datamodule.dataset("train"), hessian_readout_trained)


def export(source: Path, target: Path, backbone_only: bool = False, data: str | None = None) -> dict:
    """Write ``source``'s weights, model config and training domain to ``target``; returns the written dict.

    ``data``: record the domain of that data config's training split instead of ``source``'s record.
    """
    source = best_checkpoint(source)
    config, state_dict, domain = read_checkpoint_and_domain(source)
    if backbone_only:
        state_dict = {k: v for k, v in state_dict.items() if not is_hessian_key(k)}
        config = {k: v for k, v in config.items() if k not in HESSIAN_CONFIG_KEYS}
    trained = domain.hessian_readout_trained is not False and not backbone_only
    if data is not None:
        domain = data_config_domain(data, trained)
    # a re-export (e.g. to add the domain) keeps the training run's file as its provenance
    exported_from = safe_torch_load(source).get("exported_from") or str(source)
    checkpoint = {"state_dict": {f"model.{k}": v.contiguous() for k, v in state_dict.items()},
                  "hyper_parameters": {"model": config}, "exported_from": exported_from}
    if data is not None:
        checkpoint["training_domain_from"] = f"configs/data/{data}.yaml"
    if domain.known:  # without a record, loading says "unknown" (and a file without readout, untrained)
        checkpoint["training_domain"] = dataclasses.replace(domain, hessian_readout_trained=trained).to_dict()
    AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a checkpoint, or a run's checkpoints/ folder (its best epoch)")
    parser.add_argument("target", type=Path, help="the file to write, e.g. ckpt/hip_small.ckpt")
    parser.add_argument("--backbone-only", action="store_true", help="drop the Hessian readout")
    parser.add_argument("--data", help="record the training domain of configs/data/<DATA>.yaml's train split")
    args = parser.parse_args(argv)
    checkpoint = export(args.source, args.target, args.backbone_only, args.data)
    size = args.target.stat().st_size / 2**20
    record = checkpoint.get("training_domain")
    print(f"wrote {args.target} ({size:.2f} MiB, {len(checkpoint['state_dict'])} tensors) from "
          f"{checkpoint['exported_from']}; "
          + (TrainingDomain.from_dict(record, str(args.target)).describe() if record else "training domain unknown"))


if __name__ == "__main__":
    main()
