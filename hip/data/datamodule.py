"""Lightning data module over HORM shards: datasets from :mod:`hip.data.horm`, batches of
:class:`~hip.data.graphs.MoleculeGraph` collated by :func:`hip.data.graphs.collate`.

The training loader is a torchdata ``StatefulDataLoader``: Lightning (≥ 2.3) stores its
``state_dict`` (sampler generator and position within the epoch, worker states) in every
checkpoint and restores it on resume, so a run resumed from a mid-epoch checkpoint continues
with the next unseen batch of the same shuffled order instead of restarting the epoch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from hip.data.graphs import GraphBuilder, collate
from hip.data.horm import HormDataset

Source = str | os.PathLike | Sequence[str | os.PathLike]
Indices = int | Sequence[int] | None


def _indices(indices: Indices) -> Sequence[int] | None:
    return range(indices) if isinstance(indices, int) else indices


class HormDataModule(L.LightningDataModule):
    """Train / val / test HORM datasets and their loaders.

    Args:
        train, val, test: a shard, a directory of shards or a list of them (see
            :class:`~hip.data.horm.HormDataset`); ``val`` and ``test`` are optional.
        batch_size: molecules per batch (all loaders).
        num_workers: DataLoader worker processes; they read LMDB and build graphs. Workers are
            persistent when ``num_workers > 0``.
        exclude_elements, skip_invalid, cache_dir: passed to every :class:`HormDataset`.
        cutoff, max_neighbors, cutoff_hessian: graph settings (Å, count, Å) of the
            :class:`~hip.data.graphs.GraphBuilder`.
        train_indices, val_indices, test_indices: raw indices to use, or an int K for the first K
            entries (molecules filtered out among them are dropped, so there may be fewer than K).
        seed: seed of the training shuffle (the order differs per epoch, reproducibly).
        shuffle: shuffle the training set (False: file order, e.g. to compare runs batch by batch).
        pin_memory: passed to the DataLoaders.

    Each batch is a ``torch_geometric.data.Batch`` with the fields of ``MoleculeGraph`` plus
    ``batch`` [ΣN] and ``ptr`` [B + 1].
    """

    def __init__(
        self,
        train: Source,
        val: Source | None = None,
        test: Source | None = None,
        *,
        batch_size: int = 8,
        num_workers: int = 0,
        exclude_elements: Sequence[int] = (9,),
        skip_invalid: bool = False,
        cutoff: float = 12.0,
        max_neighbors: int | None = 20,
        cutoff_hessian: float = 12.0,
        train_indices: Indices = None,
        val_indices: Indices = None,
        test_indices: Indices = None,
        seed: int = 0,
        shuffle: bool = True,
        pin_memory: bool = False,
        cache_dir: str | os.PathLike | None = "auto",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.sources = {"train": train, "val": val, "test": test}
        self.subsets = {"train": train_indices, "val": val_indices, "test": test_indices}
        self.graph_builder = GraphBuilder(cutoff=cutoff, max_neighbors=max_neighbors,
                                          cutoff_hessian=cutoff_hessian)
        self.datasets: dict[str, HormDataset] = {}

    def dataset(self, split: str) -> HormDataset | None:
        """The dataset of ``split`` ("train", "val" or "test"), built on first use; None if absent."""
        if split not in self.datasets and self.sources[split] is not None:
            hp = self.hparams
            self.datasets[split] = HormDataset(
                self.sources[split], self.graph_builder, indices=_indices(self.subsets[split]),
                exclude_elements=hp.exclude_elements, skip_invalid=hp.skip_invalid, cache_dir=hp.cache_dir)
        return self.datasets.get(split)

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, ("train", "val", "test")):
            self.dataset(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader | list:
        dataset = self.dataset(split)
        if dataset is None:
            return []  # Lightning skips a loop whose loader list is empty
        hp = self.hparams
        # resumable mid-epoch (see the module docstring); evaluation loaders restart anyway
        loader = StatefulDataLoader if split == "train" else DataLoader
        return loader(
            dataset, batch_size=hp.batch_size, shuffle=shuffle, collate_fn=collate,
            num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0, pin_memory=hp.pin_memory,
            # the training loader's own generator also seeds its workers: drawing that seed from the
            # global RNG would shift the model's random draws after a mid-epoch resume
            generator=torch.Generator().manual_seed(hp.seed) if split == "train" else None)

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train", shuffle=self.hparams.shuffle)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", shuffle=False)
