"""hip: HIP-EquiformerV2, molecular Hessians predicted in one forward pass (arXiv 2509.21624).

Public API::

    from hip import load_checkpoint, collate_molecules, split_hessian
    model = load_checkpoint("ckpt/hip_frozen.ckpt")
    batch = collate_molecules([atoms1, atoms2], model.graph_builder())
    out = model(batch)            # energy [B] eV, forces [N, 3] eV/Å, hessian flat eV/Å²
    hessians = split_hessian(out["hessian"], batch.natoms)   # B tensors (3N, 3N)

The model modules import fairchem (slow); they are loaded on first use so that ``hip.data``
stays light.
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["HIPEquiformerV2", "collate_molecules", "load_checkpoint", "split_hessian"]

_HOMES = {
    "HIPEquiformerV2": "hip.model.hip_equiformer",
    "load_checkpoint": "hip.model.checkpoints",
    "collate_molecules": "hip.data.graphs",
    "split_hessian": "hip.data.graphs",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'hip' has no attribute {name!r}")
