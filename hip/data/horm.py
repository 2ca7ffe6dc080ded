"""HORM LMDB shards as a dataset of :class:`~hip.data.graphs.MoleculeGraph` objects.

The format (keys, the pickled ``torch_geometric`` ``Data`` entries and their fields) and every read of
a shard belong to :mod:`hip.data.store`: values are unpickled by :func:`hip.data.store.load_value`,
which allows only the globals such entries name (:data:`hip.safe_loading.ENTRY_GLOBALS`), so a shard
cannot run code. This module validates the entries (:func:`decode_entry`) and indexes them.

Indexing. Shards are concatenated in order (a directory's ``*.lmdb`` files sorted by name). A
*raw index* ``g`` names entry ``b"{g - offset}"`` of the shard whose range holds ``g``. The
``indices`` argument and the ``dataset_idx`` label of every molecule are raw indices, so they stay
stable whatever the filter settings; ``len(dataset)`` and ``dataset[i]`` count only the molecules
that were kept.

Filtering and invalid entries. When ``exclude_elements`` is non-empty or ``skip_invalid`` is True,
the entries are read and validated once, at construction, a cost that grows with the shard (README
"Performance"), hence the scan cache below. With
``skip_invalid=False`` the first invalid entry met there raises; with ``skip_invalid=True`` each one
is logged (``logging.warning`` naming shard, key and reason), recorded in :attr:`HormDataset.skipped`
and left out of the index, so indexing stays dense. Without filtering and skipping nothing is read
up front and an invalid entry raises when it is loaded.

Scan cache. When a shard has at least :data:`CACHE_MIN_ENTRIES` entries to examine, the whole shard
is scanned and the result (excluded and invalid keys, with reasons) is stored as one ``.npz`` in
``cache_dir`` (default: ``$HIP_CACHE_DIR`` or ``$XDG_CACHE_HOME/hip`` or ``~/.cache/hip``, then
``horm_index/``). The file name hashes the shard's resolved path, size and mtime, the excluded
elements and :data:`CACHE_VERSION`, so a changed shard or setting is rescanned; a stale file is
never read. Delete the folder to force rescans. ``skip_invalid`` is applied to the cached result:
skips are logged again on every load, and without it an invalid entry in the selection raises.
Smaller selections are scanned directly and not cached.

Processes. LMDB environments live in the store's process-wide cache
(:func:`hip.data.store.open_shard`), not in the dataset: they are opened on first use, shared by all
datasets, the labeller and the scripts of the process (py-lmdb refuses to open one file twice in a
process), never pickled, and a forked DataLoader worker closes the ones it inherited and opens its own.
Any worker start method works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from hip.constants import HORM_ELEMENTS
from hip.data.graphs import GraphBuilder, MoleculeGraph, check_molecule
from hip.data.store import HormDataError, close_shards, load_value, open_shard, read_raw, shard_length

__all__ = ["CACHE_MIN_ENTRIES", "REQUIRED_FIELDS", "HormDataError", "HormDataset", "close_shards", "decode_entry",
           "default_cache_dir", "open_shard"]  # HormDataError, close_shards, open_shard: from hip.data.store

logger = logging.getLogger(__name__)

#: Fields every entry must have (``charges``, ``natoms`` and ``rxn`` are optional).
REQUIRED_FIELDS = ("pos", "one_hot", "energy", "ae", "forces", "hessian")
#: Shards with at least this many entries to examine are scanned whole and the result cached.
CACHE_MIN_ENTRIES = 10_000
#: Bump when validation rules change, so that old scan caches are ignored.
CACHE_VERSION = 2  # 2: entries naming globals outside hip.safe_loading.ENTRY_GLOBALS are invalid


def default_cache_dir() -> Path:
    """Folder for scan caches: ``$HIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/hip``, else ``~/.cache/hip``."""
    root = os.environ.get("HIP_CACHE_DIR")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hip"
    return Path(root) / "horm_index"


def _entry_fields(obj: Any, where: str) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    try:  # torch_geometric Data (also when it was pickled by another PyG 2.x version)
        return dict(obj.to_dict())
    except Exception:
        pass
    if hasattr(obj, "__dict__"):  # old-style objects that keep fields as attributes
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    raise HormDataError(f"{where}: entry is a {type(obj).__name__}, expected a torch_geometric Data")


def _field(fields: dict[str, Any], name: str, where: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    try:
        value = torch.as_tensor(fields[name])
        return value if dtype is None else value.to(dtype)
    except Exception as e:
        raise HormDataError(f"{where}: field '{name}' is not a tensor ({type(e).__name__}: {e})") from e


def _finite(value: torch.Tensor, name: str, where: str) -> None:
    if not torch.isfinite(value).all():
        raise HormDataError(f"{where}: field '{name}' contains NaN or inf")


def decode_entry(raw: bytes | None, where: str, check_geometry: bool = True) -> dict[str, torch.Tensor]:
    """Unpickle (:func:`hip.data.store.load_value`: nothing in the entry runs) and validate one HORM entry.

    Args:
        raw: the LMDB value, or ``None`` when the key was missing.
        where: context for messages, e.g. ``"shard.lmdb key b'17'"``.
        check_geometry: also run :func:`~hip.data.graphs.check_molecule` (finite positions, no two
            atoms closer than 0.1 Å). Graph building runs it anyway, so loading skips it here.

    Returns:
        ``z`` [N] int64 atomic numbers; ``pos`` [N, 3] Å; ``energy`` [] eV; ``ae`` [] eV;
        ``forces`` [N, 3] eV/Å; ``hessian`` [9N²] eV/Å² (HORM's flat row-major layout). Floats are
        in the default dtype, values unchanged.

    Raises:
        HormDataError: missing key, unpicklable value or one naming a global outside
            :data:`hip.safe_loading.ENTRY_GLOBALS` (refused unrun), missing or malformed field, a
            ``one_hot`` row that is not one-hot (an element outside H, C, N, O, F), ``charges`` or ``natoms``
            inconsistent with it, non-finite values, atoms closer than 0.1 Å, ``forces`` not [N, 3],
            ``hessian`` not (3N)² entries. The message starts with ``where`` and names the field.
    """
    if raw is None:
        raise HormDataError(f"{where}: key missing (the shard holds fewer entries than its 'length' says)")
    fields = _entry_fields(load_value(raw, where), where)
    missing = [name for name in REQUIRED_FIELDS if fields.get(name) is None]
    if missing:
        raise HormDataError(f"{where}: field {', '.join(repr(m) for m in missing)} missing")
    dtype = torch.get_default_dtype()

    pos = _field(fields, "pos", where, dtype)
    if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] == 0:
        raise HormDataError(f"{where}: field 'pos' has shape {tuple(pos.shape)}, expected [N, 3] with N > 0")
    n = pos.shape[0]

    one_hot = _field(fields, "one_hot", where)
    if one_hot.shape != (n, len(HORM_ELEMENTS)):
        raise HormDataError(f"{where}: field 'one_hot' has shape {tuple(one_hot.shape)}, expected "
                            f"[{n}, {len(HORM_ELEMENTS)}] over (H, C, N, O, F)")
    charges = None
    if fields.get("charges") is not None:
        charges = _field(fields, "charges", where).reshape(-1).long()
    is_one_hot = ((one_hot == 0) | (one_hot == 1)).all(dim=1) & (one_hot.sum(dim=1) == 1)
    if not is_one_hot.all():
        row = int((~is_one_hot).nonzero()[0, 0])
        hint = f" (charges says Z = {int(charges[row])})" if charges is not None and len(charges) == n else ""
        raise HormDataError(f"{where}: field 'one_hot' row {row} is {one_hot[row].tolist()}, not one-hot "
                            f"over (H, C, N, O, F): an element outside H, C, N, O, F or a corrupt row{hint}")
    z = torch.tensor(HORM_ELEMENTS)[one_hot.argmax(dim=1)]
    if charges is not None and not torch.equal(charges, z):
        raise HormDataError(f"{where}: field 'charges' {charges.tolist()} disagrees with the atomic numbers "
                            f"{z.tolist()} from field 'one_hot'")
    if fields.get("natoms") is not None:
        natoms = _field(fields, "natoms", where)
        if natoms.numel() != 1 or int(natoms) != n:
            raise HormDataError(f"{where}: field 'natoms' is {natoms.tolist()}, but 'pos' holds {n} atoms")

    labels = {}
    for name in ("energy", "ae"):
        value = _field(fields, name, where, dtype)
        if value.numel() != 1:
            raise HormDataError(f"{where}: field '{name}' has shape {tuple(value.shape)}, expected a scalar")
        labels[name] = value.reshape(())
    forces = _field(fields, "forces", where, dtype)
    if forces.shape != (n, 3):
        raise HormDataError(f"{where}: field 'forces' has shape {tuple(forces.shape)}, expected [N, 3] = "
                            f"[{n}, 3]")
    hessian = _field(fields, "hessian", where, dtype)
    if hessian.numel() != 9 * n * n:
        raise HormDataError(f"{where}: field 'hessian' has {hessian.numel()} entries, expected (3N)² = "
                            f"{9 * n * n} for N = {n}")
    labels["forces"], labels["hessian"] = forces, hessian.reshape(-1)
    for name, value in labels.items():
        _finite(value, name, where)
    if check_geometry:
        try:
            check_molecule(z, pos, where)
        except ValueError as e:
            raise HormDataError(str(e)) from e
    return {"z": z, "pos": pos, **labels}


def _shard_paths(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(path, str | os.PathLike):
        path = Path(path)
        if path.is_dir():
            shards = sorted(path.glob("*.lmdb"))
            if not shards:
                raise FileNotFoundError(f"no *.lmdb shards in directory {path}")
            return shards
        if not path.is_file():
            raise FileNotFoundError(f"HORM shard {path} not found")
        return [path]
    shards = [p for item in path for p in _shard_paths(item)]
    if not shards:
        raise FileNotFoundError("no HORM shards given")
    return shards


class HormDataset(Dataset):
    """HORM LMDB shards → :class:`~hip.data.graphs.MoleculeGraph` (see the module docstring).

    Each item holds ``z`` [N] int64 (from ``one_hot``, checked against ``charges``), ``pos`` [N, 3] Å,
    ``natoms`` [], the labels ``energy`` [] eV, ``ae`` [] eV, ``forces`` [N, 3] eV/Å, ``hessian``
    [9N²] eV/Å² (HORM's values, in the default float dtype), ``dataset_idx`` [] int64 (the raw
    index), and the graph fields built by ``graph_builder``.

    Args:
        path: one ``.lmdb`` file, a directory of ``*.lmdb`` shards (sorted by name), or a sequence of
            either; shards are concatenated in order.
        graph_builder: transform applied in ``__getitem__`` (default ``GraphBuilder()``).
        indices: raw indices to use (order kept, repeats allowed); default all entries.
        exclude_elements: drop molecules containing any of these atomic numbers (default: F, as HIP
            does); ``()`` keeps everything.
        skip_invalid: leave out invalid entries (each logged, see :attr:`skipped`) instead of raising.
        cache_dir: where whole-shard scans are cached; ``"auto"``: :func:`default_cache_dir`;
            ``None`` disables the cache.

    Raises:
        FileNotFoundError: a shard or directory is missing.
        HormDataError: a shard is not LMDB or lacks ``b"length"``; an index is out of range; an
            entry read during construction is invalid and ``skip_invalid`` is False. ``__getitem__``
            raises it for invalid entries met later; messages name shard path, key and field.
    """

    def __init__(
        self,
        path: str | os.PathLike | Sequence[str | os.PathLike],
        graph_builder: GraphBuilder | None = None,
        *,
        indices: Iterable[int] | None = None,
        exclude_elements: Iterable[int] = (9,),
        skip_invalid: bool = False,
        cache_dir: str | os.PathLike | None = "auto",
    ):
        self.graph_builder = graph_builder if graph_builder is not None else GraphBuilder()
        self.exclude_elements = tuple(sorted({int(e) for e in exclude_elements}))
        self.skip_invalid = bool(skip_invalid)
        if cache_dir == "auto":
            cache_dir = default_cache_dir()
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.shards = _shard_paths(path)
        lengths = []
        for shard in self.shards:
            lengths.append(shard_length(shard))
        self.lengths = lengths
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(self.offsets[-1])
        if indices is None:
            index = np.arange(total, dtype=np.int64)
        else:
            if isinstance(indices, torch.Tensor):
                indices = indices.tolist()
            index = np.asarray(list(indices), dtype=np.int64).reshape(-1)
            bad = index[(index < 0) | (index >= total)]
            if bad.size:
                raise HormDataError(f"indices {bad[:5].tolist()} out of range for {total} entries in "
                                    f"{[str(s) for s in self.shards]}")
        #: Skipped invalid entries among the selection: (shard path, key, reason).
        self.skipped: list[tuple[str, bytes, str]] = []
        #: Number of selected entries left out by ``exclude_elements``.
        self.num_excluded = 0
        if self.exclude_elements or self.skip_invalid:
            index = self._filter(index)
        self.index = index

    # ---------------------------------------------------------------- construction-time scan
    def _filter(self, index: np.ndarray) -> np.ndarray:
        shard_of = np.searchsorted(self.offsets, index, side="right") - 1
        keep = np.ones(len(index), dtype=bool)
        for s, shard in enumerate(self.shards):
            mine = shard_of == s
            if not mine.any():
                continue
            local = index[mine] - self.offsets[s]
            wanted = np.unique(local)
            start = time.perf_counter()
            if self.cache_dir is not None and len(wanted) >= CACHE_MIN_ENTRIES:
                excluded, skipped, reasons = self._scan_cached(s)
            else:
                excluded, skipped, reasons = self._scan(s, wanted, raise_invalid=not self.skip_invalid)
            in_selection = np.isin(skipped, wanted)
            if not self.skip_invalid and in_selection.any():  # from a whole-shard scan
                raise HormDataError(reasons[int(np.argmax(in_selection))])
            keep[mine] = ~np.isin(local, np.union1d(excluded, skipped))
            for key, reason in zip(skipped[in_selection], np.asarray(reasons)[in_selection], strict=True):
                logger.warning("skipping invalid HORM entry: %s", reason)
                self.skipped.append((str(shard), str(int(key)).encode(), str(reason)))
            n_excluded = int(np.isin(local, excluded).sum())
            self.num_excluded += n_excluded
            n_skipped = int(np.isin(local, skipped).sum())
            logger.info("%s: kept %d of %d selected entries (%d with elements %s excluded, %d invalid "
                        "skipped) in %.1f s", shard, int(keep[mine].sum()), len(local), n_excluded,
                        self.exclude_elements, n_skipped, time.perf_counter() - start)
            if n_skipped:
                logger.warning("%s: skipped %d invalid entries (keys listed above)", shard, n_skipped)
        return index[keep]

    def _scan(self, s: int, local: np.ndarray, raise_invalid: bool
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Read entries ``local`` of shard ``s``: (excluded keys, invalid keys, their reasons)."""
        shard, excluded, skipped, reasons = self.shards[s], [], [], []
        exclude = set(self.exclude_elements)
        with open_shard(shard).begin() as txn:
            for key in tqdm(local.tolist(), desc=f"scanning {shard.name}", leave=False,
                            disable=len(local) < CACHE_MIN_ENTRIES):
                where = f"HORM shard {shard} key {str(key).encode()!r}"
                try:
                    entry = decode_entry(txn.get(str(key).encode()), where)
                except HormDataError as e:
                    if raise_invalid:
                        raise
                    skipped.append(key)
                    reasons.append(str(e))
                    continue
                if exclude and not exclude.isdisjoint(entry["z"].tolist()):
                    excluded.append(key)
        return np.asarray(excluded, dtype=np.int64), np.asarray(skipped, dtype=np.int64), reasons

    def _scan_cached(self, s: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        shard = self.shards[s]
        stat = shard.stat()
        key = json.dumps([str(shard.resolve()), stat.st_size, stat.st_mtime_ns, self.exclude_elements,
                          CACHE_VERSION])
        file = self.cache_dir / f"{shard.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
        if file.is_file():
            try:
                with np.load(file, allow_pickle=False) as cached:
                    logger.info("%s: scan result read from cache %s", shard, file)
                    return cached["excluded"], cached["skipped"], cached["reasons"].tolist()
            except Exception as e:  # a damaged cache file is rescanned, not trusted
                logger.warning("ignoring unreadable scan cache %s (%s)", file, e)
        # the whole shard, recording invalid entries whatever skip_invalid says (_filter applies it)
        excluded, skipped, reasons = self._scan(s, np.arange(self.lengths[s], dtype=np.int64), False)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, excluded=excluded, skipped=skipped, reasons=np.asarray(reasons, dtype=str))
            os.replace(tmp, file)
            logger.info("%s: scan result cached in %s", shard, file)
        except OSError as e:
            logger.warning("could not write scan cache %s (%s)", file, e)
        return excluded, skipped, reasons

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.index)

    def _locate(self, i: int) -> tuple[int, bytes, int]:
        g = int(self.index[i])
        s = int(np.searchsorted(self.offsets, g, side="right")) - 1
        return s, str(g - int(self.offsets[s])).encode(), g

    def locate(self, i: int) -> tuple[Path, bytes, int]:
        """Shard path, LMDB key and raw index of item ``i``."""
        s, key, g = self._locate(i)
        return self.shards[s], key, g

    def _raw(self, i: int) -> tuple[bytes | None, str, int]:
        s, key, g = self._locate(i)
        return read_raw(self.shards[s], key), f"HORM shard {self.shards[s]} key {key!r}", g

    def read(self, i: int) -> dict[str, torch.Tensor]:
        """Item ``i`` decoded and validated, without graphs (fields as in :func:`decode_entry`)."""
        raw, where, _ = self._raw(i)
        return decode_entry(raw, where, check_geometry=True)

    def __getitem__(self, i: int) -> MoleculeGraph:
        raw, where, g = self._raw(i)
        entry = decode_entry(raw, where, check_geometry=False)
        try:
            return self.graph_builder(where=where, dataset_idx=torch.tensor(g), **entry)
        except ValueError as e:  # geometry checks of build_molecule_graph
            raise HormDataError(str(e)) from e

    def close(self) -> None:
        """Close this process's environments of this dataset's shards (they reopen on next access)."""
        close_shards(self.shards)

    def __repr__(self) -> str:
        return (f"HormDataset({len(self)} molecules from {len(self.shards)} shard(s), exclude_elements="
                f"{self.exclude_elements}, skip_invalid={self.skip_invalid}, {self.graph_builder!r})")
