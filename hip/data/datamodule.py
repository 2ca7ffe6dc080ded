"""Lightning data module over HORM shards: datasets from :mod:`hip.data.horm`, batches of
:class:`~hip.data.graphs.MoleculeGraph` collated by :func:`hip.data.graphs.collate`.

Resuming. The training loader is a torchdata ``StatefulDataLoader`` whose sampler is torchdata's
``StatefulDistributedSampler`` (with one replica outside DDP): the order of epoch e is a function of
``seed`` and e alone (Lightning sets the epoch), and the sampler counts what it has yielded and
(our addition) saves its epoch, which a resumed loader with workers needs before Lightning sets it.
Lightning (≥ 2.3) stores the loader's ``state_dict`` in every checkpoint and restores it, so a run
resumed from a mid-epoch checkpoint continues with the next unseen batch of the same order, and
later epochs are shuffled as in an uninterrupted run. (A generator-driven ``RandomSampler`` is not
enough: the loader draws its worker base seed from the same generator, which a restored state does
not replay, so the epochs after a resumed one would be shuffled differently.)

Distributed training. Under DDP each process takes every world-size-th molecule of the epoch's
order (the same ``shuffle`` and ``seed``); Lightning leaves this sampler in place (its own, inserted
otherwise, always shuffles). Validation and test loaders get Lightning's ``DistributedSampler`` (in
order; it repeats a few molecules when the count is not a multiple of the number of processes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from hip.data.graphs import GraphBuilder, collate
from hip.data.horm import HormDataset

Source = str | os.PathLike | Sequence[str | os.PathLike]
Indices = int | Sequence[int] | None


class _Sampler(StatefulDistributedSampler):
    """torchdata's resumable distributed sampler that also saves its epoch.

    On resume Lightning creates the training iterator before it calls ``set_epoch``, and with
    ``num_workers > 0`` the iterator starts prefetching at once, i.e. from epoch 0's order.
    """

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.epoch = state_dict.get("epoch", self.epoch)


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
        cutoff, max_neighbors, cutoff_hessian: graph settings (Å, count or None for no cap, Å) of the
            :class:`~hip.data.graphs.GraphBuilder`; required, with no default here: they must be the
            model's (``max_radius``, ``max_neighbors``, ``cutoff_hessian``), which ``train.py`` and
            ``eval.py`` pass from the built or loaded model (:func:`hip.training.instantiate_datamodule`).
        train_indices, val_indices, test_indices: raw indices to use, or an int K for the first K
            entries (molecules filtered out among them are dropped, so there may be fewer than K).
        seed: seed of the training shuffle: epoch e's order depends on (seed, e) only (Lightning calls
            the sampler's ``set_epoch``; iterating the loader again without it repeats the order).
        shuffle: shuffle the training set (False: file order, e.g. to compare runs batch by batch).
        pin_memory: passed to the DataLoaders.

    Each batch is a ``torch_geometric.data.Batch`` with the fields of ``MoleculeGraph`` plus
    ``batch`` [ΣN] and ``ptr`` [B + 1].

    Raises:
        ValueError: ``batch_size`` not an integer ≥ 1, ``num_workers`` not an integer ≥ 0 (the message
            names the config key, e.g. ``data.batch_size='abc'``).
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
        cutoff: float,
        max_neighbors: int | None,
        cutoff_hessian: float,
        train_indices: Indices = None,
        val_indices: Indices = None,
        test_indices: Indices = None,
        seed: int = 0,
        shuffle: bool = True,
        pin_memory: bool = False,
        cache_dir: str | os.PathLike | None = "auto",
    ):
        super().__init__()
        for key, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"data.{key}={value!r}: expected an integer ≥ {least}")
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
        options = dict(batch_size=hp.batch_size, collate_fn=collate, num_workers=hp.num_workers,
                       persistent_workers=hp.num_workers > 0, pin_memory=hp.pin_memory)
        if split != "train":  # evaluation loaders restart anyway
            return DataLoader(dataset, shuffle=shuffle, **options)
        # resumable mid-epoch, with or without DDP (see the module docstring)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        sampler = _Sampler(dataset, num_replicas=None if distributed else 1, rank=None if distributed else 0,
                           shuffle=shuffle, seed=hp.seed)
        # the loader draws its workers' base seed from this generator, not from the global RNG,
        # which the model's random draws use and a checkpoint restores
        return StatefulDataLoader(dataset, sampler=sampler, generator=torch.Generator().manual_seed(hp.seed),
                                  **options)

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train", shuffle=self.hparams.shuffle)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", shuffle=False)
