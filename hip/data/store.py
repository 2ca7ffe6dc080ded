"""The HORM LMDB format: the one reader and writer of HORM-style shards in hip.

Format (``../shared/horm/README.md``): one LMDB file per shard, opened with ``subdir=False``; keys
``b"0"``, ``b"1"``, … ``b"{length-1}"`` and ``b"length"`` (a pickled int); each value a pickled
``torch_geometric.data.Data`` with the fields of :data:`HORM_FIELDS`: ``pos`` [N, 3] Å, ``one_hot``
[N, 5] over (H, C, N, O, F), ``charges`` [N] (atomic numbers), ``natoms``, ``energy`` eV, ``ae`` eV,
``forces`` [N, 3] eV/Å, ``hessian`` [(3N)²] eV/Å² row-major, ``rxn``. Every value is unpickled by
:func:`load_value`, which allows only the globals such entries name
(:data:`hip.safe_loading.ENTRY_GLOBALS`): a shard cannot run code. Entries are validated field by
field by the dataset (:func:`hip.data.horm.decode_entry`); this module moves bytes.

Environments. py-lmdb refuses to open a file that is already open in the same process, so every
user in hip (the dataset and its DataLoader workers, the labeller, the scripts, prediction writers)
goes through one process-wide cache (:func:`open_shard`): at most one environment per file, shared,
opened on first use, never pickled. Reading uses whatever environment the cache holds; a request to
write replaces a read-only one by a writable one (read-only: ``readonly=True, lock=False,
readahead=False, meminit=False`` as HORM's loader; writable: LMDB's locking, map size grown as
needed). After a fork (DataLoader workers) the child closes what it inherited, in the child only,
and opens its own. :func:`close_shards` closes environments, e.g. before a shard is rewritten by
other code. Callers never close an environment themselves.

Writing (the API for the labeller and any other writer of HORM-format shards):

* :func:`make_entry` builds a ``Data`` with exactly HORM's fields and dtypes from arrays in hip's
  units;
* :func:`write_entry` / :func:`write_entries` store entries under consecutive integer keys and set
  ``b"length"`` in the same committed LMDB transaction: after a crash an entry is either complete
  and counted or absent, a batch is written whole or not at all. An existing key is left alone
  (re-running a writer resumes; it never duplicates), a key beyond the current length is refused
  (no gaps), and every value is read back through :func:`load_value` before it is stored, so a
  written shard is always one hip can read;
* :func:`compact` rewrites a finished shard without free pages.

For example, a writer of predictions in HORM's format::

    from hip.data import store
    entries = [store.make_entry(z, pos, e, e - e_ref, f, h, rxn=i) for i, (z, pos, e, f, h) in enumerate(rows)]
    store.write_entries("predictions.lmdb", enumerate(entries))   # one transaction: all or nothing
    store.compact("predictions.lmdb")                              # when finished

Reading: :func:`shard_length`, :func:`read_raw`, :func:`read_entry`, :func:`has_entry`,
:func:`iter_entries`. Errors name the shard, the key and, where one is at fault, the field
(:class:`HormDataError`).
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch
from torch_geometric.data import Data

from hip.constants import HORM_ELEMENTS
from hip.safe_loading import RefusedGlobalError, safe_loads

LENGTH_KEY = b"length"
#: Initial map size of a writable environment; doubled whenever a transaction does not fit.
DEFAULT_MAP_SIZE = 1 << 30

#: HORM's fields and dtypes, in the order of ``../shared/horm/README.md``'s table.
HORM_FIELDS: dict[str, torch.dtype] = {
    "pos": torch.float32,
    "one_hot": torch.float32,
    "charges": torch.int32,
    "natoms": torch.int64,
    "energy": torch.float32,
    "ae": torch.float32,
    "forces": torch.float32,
    "hessian": torch.float32,
    "rxn": torch.int64,
}


class HormDataError(ValueError):
    """A HORM shard or entry is unusable. The message names the shard path, the key and the field."""


# This process's environments by resolved path: (environment, (device, inode) of the file it opened,
# writable). py-lmdb refuses a second environment on a path, even after the file was replaced.
_ENVS: dict[str, tuple[lmdb.Environment, tuple[int, int], bool]] = {}
_ENVS_PID = os.getpid()
_LOCK = threading.RLock()


def _drop_inherited() -> None:
    """After a fork: close the parent's environments in this process only (LMDB forbids their use)."""
    global _ENVS_PID
    if _ENVS_PID != os.getpid():
        for env, _, _ in _ENVS.values():
            env.close()
        _ENVS.clear()
        _ENVS_PID = os.getpid()


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def open_shard(path: str | os.PathLike, write: bool = False, map_size: int = DEFAULT_MAP_SIZE) -> lmdb.Environment:
    """This process's environment of one HORM-format LMDB file, from the process-wide cache.

    Do not close it (use :func:`close_shards`); do not keep it across calls that may write to the same
    file (a write request replaces a read-only environment, and a file replaced on disk gets a new one).
    Most callers want the path-based functions of this module instead.

    Args:
        path: the ``.lmdb`` file.
        write: a writable environment; the file and its parent folders are created if missing, and a new
            file gets ``b"length" = 0``, so it is a valid empty shard.
        map_size: initial map size of a new writable environment, bytes (it grows as needed).

    Raises:
        FileNotFoundError: reading, and ``path`` is not a file.
        HormDataError: the file is not an LMDB database.
        RuntimeError: the file is open in this process outside this cache (py-lmdb opens a file once).
    """
    path = Path(path)
    resolved = path.resolve()
    with _LOCK:
        _drop_inherited()
        inode = _inode(resolved)
        cached = _ENVS.get(str(resolved))
        if cached is not None:
            env, opened, writable = cached
            if opened == inode and (writable or not write):
                return env
            env.close()  # the file was replaced, or read-only → writable: one environment per file
            del _ENVS[str(resolved)]
        if inode is not None and not resolved.is_file():
            raise FileNotFoundError(f"HORM shard {path} is not a file")
        if not write and inode is None:
            raise FileNotFoundError(f"HORM shard {path} not found")
        try:
            if write:
                resolved.parent.mkdir(parents=True, exist_ok=True)
                size = resolved.stat().st_size if resolved.exists() else 0
                env = lmdb.open(str(resolved), subdir=False, map_size=max(map_size, 2 * size), readahead=False)
            else:
                env = lmdb.open(str(resolved), subdir=False, readonly=True, lock=False, readahead=False,
                                meminit=False)
        except lmdb.Error as e:
            if "already open" in str(e):
                raise RuntimeError(f"HORM shard {path} is already open in this process outside "
                                   "hip.data.store.open_shard; open it through the store (py-lmdb opens a "
                                   "file once per process)") from e
            raise HormDataError(f"HORM shard {path}: cannot be opened as LMDB ({e})") from e
        _ENVS[str(resolved)] = (env, _inode(resolved), write)
        if write:
            with env.begin(write=True) as txn:
                if not txn.cursor().first():  # a new, empty file
                    txn.put(LENGTH_KEY, pickle.dumps(0))
        return env


def close_shards(paths: Iterable[str | os.PathLike] | None = None) -> None:
    """Close this process's environments of ``paths`` (default: all); they reopen on next use.

    Needed before code outside this module rewrites or replaces a shard that this process has open.
    """
    wanted = None if paths is None else {str(Path(p).resolve()) for p in paths}
    with _LOCK:
        for key in list(_ENVS):
            if wanted is None or key in wanted:
                if _ENVS_PID == os.getpid():
                    _ENVS[key][0].close()
                del _ENVS[key]


def load_value(raw: bytes, where: str) -> Any:
    """Unpickle one LMDB value (an entry, ``b"length"``) with :func:`hip.safe_loading.safe_loads`, which
    refuses every global outside :data:`hip.safe_loading.ENTRY_GLOBALS` before importing it. The one
    reader of pickled LMDB values in hip.

    Args:
        raw: the LMDB value.
        where: context for messages, e.g. ``"HORM shard s.lmdb key b'17'"``.

    Returns:
        The unpickled object (for HORM entries a ``torch_geometric.data.Data``).

    Raises:
        HormDataError: the value names a global outside the allow-list (refused; nothing of it ran),
            or it cannot be unpickled. The message starts with ``where``.
    """
    try:
        return safe_loads(raw)
    except RefusedGlobalError as e:
        raise HormDataError(f"{where}: refused: the pickled value names '{e.global_name}', which HORM entries "
                            "do not contain (allowed: hip.safe_loading.ENTRY_GLOBALS); unpickling it could run "
                            "code from the shard. Nothing of it was run") from None
    except Exception as e:
        raise HormDataError(f"{where}: entry cannot be unpickled ({type(e).__name__}: {e})") from e


def _encode(key: int | bytes) -> bytes:
    return key if isinstance(key, bytes) else str(int(key)).encode()


def _where(path: str | os.PathLike, key: int | bytes) -> str:
    return f"HORM shard {path} key {_encode(key)!r}"


def _length(txn: lmdb.Transaction, path: str | os.PathLike) -> int:
    raw = txn.get(LENGTH_KEY)
    if raw is None:
        raise HormDataError(f"HORM shard {path}: key b'length' missing")
    length = load_value(raw, _where(path, LENGTH_KEY))
    if isinstance(length, torch.Tensor) and length.numel() == 1:
        length = length.item()
    if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 0:
        raise HormDataError(f"HORM shard {path} key b'length': holds {length!r}, expected a non-negative int")
    return int(length)


def shard_length(path: str | os.PathLike) -> int:
    """The entry count stored under ``b"length"``.

    Raises:
        FileNotFoundError: no such file.
        HormDataError: not LMDB, or the key is missing or does not hold a non-negative int.
    """
    with open_shard(path).begin() as txn:
        return _length(txn, path)


def read_raw(path: str | os.PathLike, key: int | bytes) -> bytes | None:
    """The stored bytes under ``key`` (an int ``k`` means ``b"k"``), or None if the key is absent."""
    with open_shard(path).begin() as txn:
        return txn.get(_encode(key))


def has_entry(path: str | os.PathLike, key: int | bytes) -> bool:
    """Whether ``key`` (an int ``k`` means ``b"k"``) is present."""
    return read_raw(path, key) is not None


def read_entry(path: str | os.PathLike, key: int | bytes) -> Any:
    """The value under ``key`` (an int ``k`` means ``b"k"``), unpickled by :func:`load_value`, not
    validated (for HORM entries a ``Data``; the dataset validates with :func:`hip.data.horm.decode_entry`).

    Raises:
        KeyError: no such key (the message names the shard and key).
        HormDataError: the value cannot be unpickled or names a global outside
            :data:`hip.safe_loading.ENTRY_GLOBALS` (refused unrun); the message names shard and key.
    """
    raw = read_raw(path, key)
    if raw is None:
        raise KeyError(f"HORM shard {path}: key {key} ({_encode(key)!r}) missing")
    return load_value(raw, _where(path, key))


def iter_entries(path: str | os.PathLike) -> Iterator[Any]:
    """Every entry ``0 … length−1`` of a shard, in key order (each read as by :func:`read_entry`).

    Raises:
        KeyError, HormDataError: as :func:`read_entry` and :func:`shard_length`.
    """
    for i in range(shard_length(path)):
        yield read_entry(path, i)


def write_entries(path: str | os.PathLike, entries: Iterable[tuple[int, Any]]) -> int:
    """Store ``(key, value)`` pairs and update ``b"length"``, all in one committed LMDB transaction.

    Keys must continue the shard in order (0, 1, 2, …), so that ``b"length"`` is the number of entries
    and readers can use ``range(length)``. A key already present is left alone (resume: re-running a
    writer never duplicates or overwrites). Each value is pickled and read back with :func:`load_value`
    before anything is stored. The transaction is atomic: after an error, an interrupted process or a
    crash, the shard holds all of these entries with their length, or none of them.

    Args:
        path: the shard (created if missing, see :func:`open_shard`).
        entries: ``(key, value)`` pairs, values usually from :func:`make_entry`.

    Returns:
        The number of entries written (present keys do not count).

    Raises:
        ValueError: a key would leave a gap (it is larger than the length at that point); nothing of the
            batch is stored.
        HormDataError: a value the safe loader could not read back (naming shard, key and the global),
            or a stored ``b"length"`` that is not a non-negative int; nothing is stored.
    """
    path = Path(path)
    batch = []
    for key, value in entries:
        raw = pickle.dumps(value)
        load_value(raw, f"{_where(path, key)} (being written)")
        batch.append((int(key), raw))
    env = open_shard(path, write=True)
    while True:
        try:
            written = 0
            with env.begin(write=True) as txn:
                length = _length(txn, path)
                for key, raw in batch:
                    k = _encode(key)
                    if txn.get(k) is not None:
                        continue
                    if key != length:
                        raise ValueError(f"HORM shard {path}: writing key {key} would leave a gap (length is "
                                         f"{length}); entries must be written in key order")
                    txn.put(k, raw)
                    length += 1
                    written += 1
                txn.put(LENGTH_KEY, pickle.dumps(length))
            return written
        except lmdb.MapFullError:  # the transaction was aborted: grow the map and redo it
            env.set_mapsize(2 * env.info()["map_size"])


def write_entry(path: str | os.PathLike, key: int, value: Any) -> bool:
    """Store one entry under ``key`` and set ``b"length"``, in one committed transaction
    (:func:`write_entries` with one pair; same rules and errors).

    Returns:
        True if written, False if the key was already present.
    """
    return write_entries(path, [(key, value)]) == 1


def compact(path: str | os.PathLike) -> int:
    """Rewrite a shard compactly in place (``env.copy(..., compact=True)``); returns its size in bytes.

    The file is replaced atomically (``os.replace``); this process's environment of it is closed. Must
    not run while another process writes to ``path``.

    Raises:
        FileNotFoundError, HormDataError: as :func:`open_shard`.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".compact")
    tmp.unlink(missing_ok=True)
    open_shard(path).copy(str(tmp), compact=True)
    close_shards([path])
    os.replace(tmp, path)
    Path(str(path) + "-lock").unlink(missing_ok=True)
    return path.stat().st_size


def one_hot_elements(numbers: Sequence[int]) -> torch.Tensor:
    """HORM's ``one_hot`` ``[N, 5]`` float32 over (H, C, N, O, F) (:data:`hip.constants.HORM_ELEMENTS`).

    Raises:
        ValueError: an element outside HORM's set (the message names it).
    """
    index = {z: i for i, z in enumerate(HORM_ELEMENTS)}
    bad = sorted({int(z) for z in numbers} - set(index))
    if bad:
        raise ValueError(f"elements Z={bad} are not in HORM's one-hot set Z={list(HORM_ELEMENTS)}")
    out = torch.zeros(len(numbers), len(HORM_ELEMENTS), dtype=torch.float32)
    out[torch.arange(len(numbers)), torch.tensor([index[int(z)] for z in numbers])] = 1.0
    return out


def make_entry(numbers: Sequence[int], positions, energy: float, ae: float, forces, hessian, rxn: int) -> Data:
    """A ``torch_geometric.data.Data`` with exactly HORM's fields and dtypes (:data:`HORM_FIELDS`).

    Args:
        numbers: atomic numbers [N] (H, C, N, O, F only).
        positions: [N, 3] Å.
        energy: total energy, eV.
        ae: energy minus the isolated-atom references, eV (:data:`hip.constants.ATOM_REFERENCE_ENERGY_EV`).
        forces: [N, 3] eV/Å.
        hessian: [3N, 3N] or flat [(3N)²] eV/Å², row/column index ``3·atom + xyz``.
        rxn: HORM's reaction/molecule id.

    Returns:
        ``pos`` [N,3] float32, ``one_hot`` [N,5] float32, ``charges`` [N] int32, ``natoms`` [] int64,
        ``energy``, ``ae`` [] float32, ``forces`` [N,3] float32, ``hessian`` [(3N)²] float32 row-major,
        ``rxn`` [] int64.

    Raises:
        ValueError: an element outside HORM's one-hot set, or an array of the wrong size for N atoms.
    """
    n = len(numbers)
    entry = Data(
        pos=torch.as_tensor(np.asarray(positions), dtype=torch.float32),
        one_hot=one_hot_elements(numbers),
        charges=torch.as_tensor(np.asarray(numbers), dtype=torch.int32),
        natoms=torch.tensor(n, dtype=torch.int64),
        energy=torch.tensor(float(energy), dtype=torch.float32),
        ae=torch.tensor(float(ae), dtype=torch.float32),
        forces=torch.as_tensor(np.asarray(forces), dtype=torch.float32),
        hessian=torch.as_tensor(np.asarray(hessian), dtype=torch.float32).reshape(-1),
        rxn=torch.tensor(int(rxn), dtype=torch.int64),
    )
    for name, shape in (("pos", (n, 3)), ("forces", (n, 3)), ("hessian", (9 * n * n,))):
        if tuple(entry[name].shape) != shape:
            raise ValueError(f"field '{name}' has shape {tuple(entry[name].shape)}, expected {shape} for {n} atoms")
    return entry
