#!/usr/bin/env python
"""Time one training step of HIP-EquiformerV2: frozen backbone vs end to end, eager vs fast paths.

A step is what ``hip.training.HIPModule`` does per batch: forward, :func:`hip.losses.hip_loss`,
backward, AdamW step (lr 5e-4, betas (0.9, 0.999), AMSGrad, as ``configure_optimizers``), then
``zero_grad``. Both models have the paper-size (Table 4) backbone with random weights, and see the
same batch of HORM sample molecules (with their DFT labels):

* frozen (paper §4): ``num_layers_hessian = 3``, ``model.freeze_backbone()``; loss weights
  ``hessian_mae 1, eigen_subspace 1``; only the Hessian readout trains. Timed three ways:
  ``eager`` (fairchem's own forwards, ``set_fast_paths(False)``: the code before the fast paths),
  ``fast`` (the default), and ``fast+cache`` (:meth:`~hip.model.hip_equiformer.HIPEquiformerV2.cache_backbone`:
  the backbone's outputs of a molecule are computed once, as in every epoch after the first);
* end to end: ``num_layers_hessian = --e2e-layers-hessian`` (1, as ``experiment=hip_e2e``); loss
  weights ``hessian_mae 1, eigen_subspace 1, energy 1, forces 25``; everything trains. Timed
  ``eager`` and ``fast``.

Each variant takes one warm-up step (which also fills the cache), then the variants are timed in
turn, ``--repeats`` times, in alternating order. Medians (``torch.utils.benchmark`` ``Compare``) of
process CPU time by default on a CPU (``--clock``), with one torch thread, and the ratios.

    python scripts/bench_train_step.py --batch-size 4 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
from bench_hessian import make_clock
from torch.utils import benchmark
from torch.utils.benchmark.utils.common import TaskSpec

from hip.data import HormDataset, collate
from hip.losses import hip_loss
from hip.model.hip_equiformer import HIPEquiformerV2

HORM_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "horm" / "sample_100.lmdb"
FROZEN_WEIGHTS = {"hessian_mae": 1.0, "eigen_subspace": 1.0}
E2E_WEIGHTS = {**FROZEN_WEIGHTS, "energy": 1.0, "forces": 25.0}


class Trainer:
    """One model, its optimiser, loss weights and code path: ``step(batch)`` is one training step."""

    def __init__(self, model: HIPEquiformerV2, weights: dict[str, float], fast: bool = True):
        self.model = model.train()
        self.weights = weights
        self.fast = fast
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
    p.add_argument("--model-kwargs", type=json.loads, default={},
                   help="JSON overrides of the HIPEquiformerV2 arguments of both models (default: paper size)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default 1 on CPU)")
    p.add_argument("--clock", choices=["cpu", "wall"], default=None,
                   help="process CPU time or wall time (default: cpu on a CPU, wall on CUDA)")
    p.add_argument("--horm", type=Path, default=HORM_SAMPLE)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    clock_kind = args.clock or ("wall" if device.type == "cuda" else "cpu")
    clock = make_clock(clock_kind, device)
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(0)
    frozen_model = HIPEquiformerV2(**{**args.model_kwargs, "num_layers_hessian": 3}).to(device)
    frozen_model.freeze_backbone()
    cached_model = copy.deepcopy(frozen_model)
    cached_model.cache_backbone(4.0)
    e2e_model = HIPEquiformerV2(**{**args.model_kwargs, "num_layers_hessian": args.e2e_layers_hessian}).to(device)
    trainers = {"frozen eager": Trainer(frozen_model, FROZEN_WEIGHTS, fast=False),
                "frozen fast": Trainer(frozen_model, FROZEN_WEIGHTS),
                "frozen fast+cache": Trainer(cached_model, FROZEN_WEIGHTS),
                "e2e eager": Trainer(e2e_model, E2E_WEIGHTS, fast=False),
                "e2e fast": Trainer(e2e_model, E2E_WEIGHTS)}
    dataset = HormDataset(args.horm, frozen_model.graph_builder(), cache_dir=None)
    batch = collate([dataset[i % len(dataset)] for i in range(args.batch_size)]).to(device)

    times: dict[str, list[float]] = {k: [] for k in trainers}
    for trainer in trainers.values():  # warm-up (creates the optimiser state, fills the cache)
        trainer.model.set_fast_paths(trainer.fast)
        trainer.step(batch)
    for rep in range(args.repeats):
        for name in trainers if rep % 2 == 0 else list(trainers)[::-1]:
            trainer = trainers[name]
            trainer.model.set_fast_paths(trainer.fast)
            start = clock()
            trainer.step(batch)
            times[name].append(clock() - start)

    print(f"batch of {args.batch_size} HORM molecules ({int(batch.natoms.sum())} atoms), device {device}, "
          f"{torch.get_num_threads()} thread(s), {args.repeats} repeats, clock: {clock_kind}")
    measurements = [benchmark.Measurement(1, times[name], TaskSpec(
        stmt=name, setup="", label=f"training step [{clock_kind}]",
        sub_label=f"{trainer.model.config['num_layers_hessian']} Hessian layer(s), "
                  f"{trainer.n_trainable / 1e6:.1f} M trainable",
        description=name, num_threads=torch.get_num_threads())) for name, trainer in trainers.items()]
    benchmark.Compare(measurements).print()
    result = {f"{name} s": statistics.median(t) for name, t in times.items()}
    ratios = {"frozen eager / fast": ("frozen eager", "frozen fast"),
              "frozen eager / fast+cache": ("frozen eager", "frozen fast+cache"),
              "e2e eager / fast": ("e2e eager", "e2e fast"),
              "e2e / frozen (fast)": ("e2e fast", "frozen fast")}
    for label, (a, b) in ratios.items():
        result[label] = result[f"{a} s"] / result[f"{b} s"]
        print(f"{label:28s} {result[label]:.2f}x")
    return result


if __name__ == "__main__":
    main()
