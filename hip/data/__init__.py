"""HORM data: LMDB shards → validated molecules → graphs with Hessian scatter indices → batches."""

from hip.data.datamodule import HormDataModule
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
