"""Frozen mode: only the Hessian readout trains; the backbone runs without autograd."""

from __future__ import annotations

import torch
from helpers import TINY_MODEL

from hip import HIPEquiformerV2, collate_molecules
from hip.model.hip_equiformer import HESSIAN_MODULES


def test_frozen_step_changes_only_hessian_parameters(horm_molecules):
    torch.manual_seed(0)
    model = HIPEquiformerV2(**TINY_MODEL)
    model.freeze_backbone()
    model.train()
    assert not model.blocks.training and model.hessian_layers.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.hessian_parameters()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    out = model(collate_molecules(horm_molecules, model.graph_builder()))
    assert not out["forces"].requires_grad and not out["energy"].requires_grad
    out["hessian"].abs().mean().backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the optimiser step changed nothing"
    assert all(k.startswith(HESSIAN_MODULES) for k in changed), sorted(changed)
    # every Hessian module got a gradient except fairchem's attention parts that the readout skips
    unused = ("hessian_head.alpha", "hessian_head.proj")
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None and not n.startswith(unused)]
    assert not missing, missing
