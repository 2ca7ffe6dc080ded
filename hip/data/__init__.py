"""HORM data: LMDB shards → validated molecules → graphs with Hessian scatter indices → batches.

``HormDataModule`` is imported on first access, so that ``import hip.data`` does not load
Lightning (the model and evaluation code only need the graphs and the dataset).
"""

from hip.data.graphs import GraphBuilder, MoleculeGraph, build_molecule_graph, collate, split_hessian
from hip.data.horm import HormDataError, HormDataset

__all__ = [
    "GraphBuilder",
    "HormDataError",
    "HormDataModule",
    "HormDataset",
    "MoleculeGraph",
    "build_molecule_graph",
    "collate",
    "split_hessian",
]


def __getattr__(name: str):
    if name == "HormDataModule":
        from hip.data.datamodule import HormDataModule

        return HormDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
