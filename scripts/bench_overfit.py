"""Can HIP-EquiformerV2 fit the 100 real HORM molecules end to end? Hessian MAE against wall time.

    python scripts/bench_overfit.py --minutes 30                 # paper-size model (Table 4), CPU
    python scripts/bench_overfit.py --model small --minutes 10   # the small config of the main job
    python scripts/bench_overfit.py --device gpu --minutes 20

Trains on all molecules of ``../shared/horm/sample_100.lmdb`` and validates on the same molecules
(this measures capacity and optimisation, not generalisation), with the paper's loss (MAE + k=8
eigen-subspace) plus energy/force terms, AdamW with AMSGrad and gradient clipping 0.1 (Table 4).
The validation Hessian MAE (eV/Å²) is logged every ``--val-every`` epochs to
``<output>/csv/version_0/metrics.csv`` as training goes, and a summary is printed at the end.
The all-zeros baseline on this shard is 2.49 eV/Å².
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.loggers import CSVLogger

from hip.data import HormDataModule
from hip.training import HIPModule

ROOT = Path(__file__).resolve().parents[1]
HORM_SAMPLE = ROOT / ".." / "shared" / "horm" / "sample_100.lmdb"


def model_config(name: str) -> dict:
    """Model kwargs of ``configs/model/<name>.yaml`` on top of the paper defaults."""
    config = yaml.safe_load((ROOT / "configs" / "model" / "hip_equiformer_v2.yaml").read_text())["model"]
    if name != "hip_equiformer_v2":
        config.update(yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())["model"])
    return config | {"num_layers_hessian": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hip_equiformer_v2", help="configs/model/<name>.yaml (default: paper size)")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-time budget of the training")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=5e-4, help="Table 4: 5e-4")
    parser.add_argument("--val-every", type=int, default=5, help="epochs between validations")
    parser.add_argument("--device", default="cpu", help="Lightning accelerator: cpu or gpu")
    parser.add_argument("--data", type=Path, default=HORM_SAMPLE)
    parser.add_argument("--output", type=Path, default=ROOT / "logs" / "bench_overfit")
    args = parser.parse_args()

    L.seed_everything(0)
    config = model_config(args.model)
    module = HIPModule(model=config, mode="e2e", optimizer={"lr": args.lr}, scheduler={"step_size": 10_000},
                       loss_weights={"hessian_mae": 1.0, "eigen_subspace": 1.0, "energy": 1.0, "forces": 25.0})
    data = HormDataModule(args.data, val=args.data, batch_size=args.batch_size, cutoff=config["max_radius"],
                          max_neighbors=config["max_neighbors"], cutoff_hessian=config["cutoff_hessian"])
    logger = CSVLogger(args.output, name="csv", version=0, flush_logs_every_n_steps=1)
    trainer = L.Trainer(accelerator=args.device, devices=1, max_time={"minutes": args.minutes}, max_epochs=100_000,
                        check_val_every_n_epoch=args.val_every, gradient_clip_val=0.1, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, log_every_n_steps=1)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    trainer.validate(module, datamodule=data, verbose=False)
    elapsed = time.perf_counter() - start

    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/hessian_mae")]
    n_params = sum(p.numel() for p in module.parameters())
    print(f"\nHIP-EquiformerV2 '{args.model}' ({n_params / 1e6:.2f} M parameters), 100 HORM molecules, "
          f"{args.device}, {elapsed / 60:.1f} min, {trainer.current_epoch} epochs, {trainer.global_step} steps")
    print(f"{'epoch':>6} {'step':>6} {'val Hessian MAE [eV/Å²]':>24} {'force MAE [eV/Å]':>17}")
    for r in rows:
        print(f"{r['epoch']:>6} {r['step']:>6} {float(r['val/hessian_mae']):>24.4f} {float(r['val/forces']):>17.4f}")
    print("all-zeros baseline: 2.49 eV/Å²")


if __name__ == "__main__":
    main()
