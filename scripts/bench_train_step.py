#!/usr/bin/env python
"""Time one training step of HIP-EquiformerV2 with a frozen backbone against one end-to-end step.

A step is what ``hip.training.HIPModule`` does per batch: forward, :func:`hip.losses.hip_loss`,
backward, AdamW step (lr 5e-4, betas (0.9, 0.999), AMSGrad, as ``configure_optimizers``), then
``zero_grad``. Both models have the paper-size (Table 4) backbone with random weights, and see the
same batch of HORM sample molecules (with their DFT labels):

* frozen (paper §4): ``num_layers_hessian = 3``, ``model.freeze_backbone()``; loss weights
  ``hessian_mae 1, eigen_subspace 1``; only the Hessian readout trains;
* end to end: ``num_layers_hessian = --e2e-layers-hessian`` (1, as ``experiment=hip_e2e``); loss
  weights ``hessian_mae 1, eigen_subspace 1, energy 1, forces 25``; everything trains.

Steps are timed after one warm-up step each, alternating frozen and e2e, ``--repeats`` times; the
medians of wall time and process CPU time are printed with the ratio e2e / frozen.

    python scripts/bench_train_step.py --batch-size 4 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from hip.data import HormDataset, collate
from hip.losses import hip_loss
from hip.model.hip_equiformer import HIPEquiformerV2

HORM_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "horm" / "sample_100.lmdb"
FROZEN_WEIGHTS = {"hessian_mae": 1.0, "eigen_subspace": 1.0}
E2E_WEIGHTS = {**FROZEN_WEIGHTS, "energy": 1.0, "forces": 25.0}


class Trainer:
    """One model, its optimiser and loss weights: ``step(batch)`` is one training step."""

    def __init__(self, model: HIPEquiformerV2, weights: dict[str, float]):
        self.model = model.train()
        self.weights = weights
        params = [p for p in model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.999), amsgrad=True, weight_decay=0.0)

    def step(self, batch) -> float:
        loss = hip_loss(self.model(batch), batch, self.weights)["loss"]
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=4, help="HORM sample molecules per batch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--e2e-layers-hessian", type=int, default=1,
                   help="Hessian layers of the end-to-end model (paper: 1; 3 compares equal architectures)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default 1 on CPU)")
    p.add_argument("--horm", type=Path, default=HORM_SAMPLE)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(0)
    frozen_model = HIPEquiformerV2(num_layers_hessian=3)
    frozen_model.freeze_backbone()
    e2e_model = HIPEquiformerV2(num_layers_hessian=args.e2e_layers_hessian)
    trainers = {"frozen": Trainer(frozen_model.to(device), FROZEN_WEIGHTS),
                "e2e": Trainer(e2e_model.to(device), E2E_WEIGHTS)}
    dataset = HormDataset(args.horm, frozen_model.graph_builder(), cache_dir=None)
    batch = collate([dataset[i % len(dataset)] for i in range(args.batch_size)]).to(device)

    def clock() -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    times: dict[str, list[tuple[float, float]]] = {k: [] for k in trainers}
    for trainer in trainers.values():
        trainer.step(batch)  # warm-up (also creates the optimiser state)
    for rep in range(args.repeats):
        for name in trainers if rep % 2 == 0 else list(trainers)[::-1]:
            w0, c0 = clock()
            trainers[name].step(batch)
            w1, c1 = clock()
            times[name].append((w1 - w0, c1 - c0))

    print(f"batch of {args.batch_size} HORM molecules ({int(batch.natoms.sum())} atoms), device {device}, "
          f"{torch.get_num_threads()} thread(s), {args.repeats} repeats (median)")
    result = {}
    for name, trainer in trainers.items():
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        result[f"{name}_wall_s"], result[f"{name}_cpu_s"] = wall, cpu
        layers = trainer.model.config["num_layers_hessian"]
        print(f"  {name:6s} ({layers} Hessian layer(s), {trainer.n_trainable / 1e6:5.1f} M trainable): "
              f"wall {wall:7.3f} s  cpu {cpu:7.3f} s   all wall: "
              + " ".join(f"{t[0]:.2f}" for t in times[name]))
    result["ratio_wall"] = result["e2e_wall_s"] / result["frozen_wall_s"]
    result["ratio_cpu"] = result["e2e_cpu_s"] / result["frozen_cpu_s"]
    print(f"e2e / frozen step time: {result['ratio_wall']:.2f}x (wall), {result['ratio_cpu']:.2f}x (cpu)")
    return result


if __name__ == "__main__":
    main()
